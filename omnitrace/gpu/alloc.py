"""Allocating GPU memory: what the testbed's stages and the OOM hog call.

One class per backend, one shape:

    allocator = open_allocator()               # chosen once per process, cached
    allocator.name                             # "sim", "torch", "cupy" or "cuda-python"
    allocator.device_count()
    free, total = allocator.free_memory(device)          # like torch.cuda.mem_get_info
    handle = allocator.allocate(device, nbytes)          # raises GpuOutOfMemory when it does not fit
    handle.free()

The module-level allocate/free_memory/device_count/kind delegate to the cached allocator.

Which memory: the simulated device (omnitrace.gpu.sim) when OMNITRACE_SIM_GPU is set, so a test or
demo can force it even on a GPU machine, or when there is no NVIDIA driver; else the first CUDA
binding that imports and sees a GPU (torch, cupy, cuda-python); else the simulated device at its
default location.
"""
from __future__ import annotations

import importlib.util
import os
import time
from functools import lru_cache
from typing import Any, Callable, Protocol

from omnitrace.gpu import GpuOutOfMemory, sim


class Allocation(Protocol):
    nbytes: int

    def free(self) -> None: ...


class Allocator(Protocol):
    name: str

    def device_count(self) -> int: ...

    def free_memory(self, device: int) -> tuple[int, int]: ...

    def allocate(self, device: int, nbytes: int,
                 release_delay_s: float | None = None) -> Allocation: ...


class CudaAllocation:
    """Real device memory: `block` is whatever keeps it alive. free() drops it first (the last
    reference), then calls `release` when given: torch's empty_cache, which only hands back blocks
    nobody references, or cudaFree of a raw pointer."""

    def __init__(self, block: Any, nbytes: int, release: Callable[[], Any] | None = None):
        self._block, self.nbytes, self._release = block, nbytes, release

    def free(self) -> None:
        if self._block is None:
            return
        self._block = None
        if self._release:
            self._release()


class _CudaAllocator:
    """What every real backend shares: the release delay on a real GPU."""

    def allocate(self, device: int, nbytes: int, release_delay_s: float | None = None):
        handle = self._allocate(device, nbytes)
        if release_delay_s:
            hold_context_after_exit(release_delay_s)
        return handle

    def _allocate(self, device: int, nbytes: int) -> CudaAllocation:
        raise NotImplementedError


class TorchAllocator(_CudaAllocator):
    name = "torch"

    def __init__(self) -> None:
        import torch
        self.torch = torch

    def usable(self) -> bool:
        return self.torch.cuda.is_available()  # no context made: the API server stays off the GPU

    def device_count(self) -> int:
        return self.torch.cuda.device_count()

    def free_memory(self, device: int) -> tuple[int, int]:
        free, total = self.torch.cuda.mem_get_info(device)
        return int(free), int(total)

    def _allocate(self, device: int, nbytes: int) -> CudaAllocation:
        try:
            block = self.torch.empty(nbytes, dtype=self.torch.uint8, device=f"cuda:{device}")
        except self.torch.cuda.OutOfMemoryError as exc:
            raise GpuOutOfMemory(str(exc).splitlines()[0]) from None
        # empty_cache moves the dropped block from torch's cache to the driver, where others see it
        return CudaAllocation(block, nbytes, self.torch.cuda.empty_cache)


class CupyAllocator(_CudaAllocator):
    name = "cupy"

    def __init__(self) -> None:
        import cupy
        self.cupy = cupy

    def usable(self) -> bool:
        return self.device_count() > 0

    def device_count(self) -> int:
        return int(self.cupy.cuda.runtime.getDeviceCount())

    def free_memory(self, device: int) -> tuple[int, int]:
        with self.cupy.cuda.Device(device):
            free, total = self.cupy.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def _allocate(self, device: int, nbytes: int) -> CudaAllocation:
        # cupy.cuda.Memory is a plain cudaMalloc: the memory pool would keep freed chunks cached.
        with self.cupy.cuda.Device(device):
            try:
                return CudaAllocation(self.cupy.cuda.Memory(nbytes), nbytes)
            except self.cupy.cuda.memory.OutOfMemoryError as exc:
                raise GpuOutOfMemory(str(exc)) from None


class CudaPythonAllocator(_CudaAllocator):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart

    def _check(self, result: tuple) -> tuple:
        if int(result[0]) != 0:
            raise GpuOutOfMemory(f"CUDA runtime error {int(result[0])}")
        return result[1:]

    def usable(self) -> bool:
        return self.device_count() > 0

    def device_count(self) -> int:
        return int(self._check(self.cudart.cudaGetDeviceCount())[0])

    def free_memory(self, device: int) -> tuple[int, int]:
        self._check(self.cudart.cudaSetDevice(device))
        free, total = self._check(self.cudart.cudaMemGetInfo())
        return int(free), int(total)

    def _allocate(self, device: int, nbytes: int) -> CudaAllocation:
        self._check(self.cudart.cudaSetDevice(device))
        (ptr,) = self._check(self.cudart.cudaMalloc(nbytes))
        return CudaAllocation(ptr, nbytes, lambda: self.cudart.cudaFree(ptr))


def _simulated() -> sim.SimGpu:
    """The simulated device already has the allocating side (and name "sim")."""
    return sim.SimGpu(sim.ensure_device())


_REAL = (("torch", TorchAllocator), ("cupy", CupyAllocator), ("cuda", CudaPythonAllocator))


@lru_cache(maxsize=1)
def open_allocator() -> Allocator:
    """Probes cheaply first (importing torch costs seconds) and never makes a CUDA context."""
    if os.environ.get(sim.ENV_VAR) or not os.path.exists("/dev/nvidiactl"):
        return _simulated()
    for module, cls in _REAL:
        if importlib.util.find_spec(module) is None:
            continue
        try:
            allocator = cls()
            if allocator.usable():
                return allocator
        except Exception:  # a binding that imports but cannot reach a GPU: try the next one
            continue
    return _simulated()


def kind() -> str:
    return open_allocator().name


def allocate(device: int, nbytes: int, release_delay_s: float | None = None) -> Allocation:
    """nbytes of device memory held by this process until .free() or exit. release_delay_s is how
    long after this process dies the memory stays taken."""
    return open_allocator().allocate(device, nbytes, release_delay_s)


def free_memory(device: int) -> tuple[int, int]:
    """(free_bytes, total_bytes) on `device`."""
    return open_allocator().free_memory(device)


def device_count() -> int:
    return open_allocator().device_count()


def hold_context_after_exit(delay_s: float) -> int:
    """Real GPUs: keep this process's memory taken for delay_s after it dies, the way it happens
    in the field: a child forked after CUDA initialised shares the parent's open /dev/nvidia*
    files, and the driver frees the parent's context only when the last of them closes (the
    DataLoader-worker leak). The child touches no CUDA; it waits for its parent to die, then for
    the delay. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    parent = os.getppid()
    try:
        while os.getppid() == parent:
            time.sleep(0.05)
        time.sleep(delay_s)
    finally:
        os._exit(0)
