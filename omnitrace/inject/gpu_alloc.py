"""Raw device-memory allocation for the OOM hog, through whichever CUDA binding is importable
(torch, cupy, cuda-python), or the simulated device (omnitrace.gpu.sim) when none works or
OMNITRACE_SIM_GPU asks for it.

Each backend is one small class: free_bytes(device), alloc(device, nbytes) -> handle, release().
An allocation that does not fit raises omnitrace.gpu.GpuOutOfMemory, whatever the binding raised.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from omnitrace.gpu import GpuOutOfMemory


class TorchAllocator:
    name = "torch"

    def __init__(self) -> None:
        import torch
        self.torch, self.held = torch, []

    def free_bytes(self, device: int) -> int:
        return int(self.torch.cuda.mem_get_info(device)[0])

    def alloc(self, device: int, nbytes: int) -> Any:
        try:
            block = self.torch.empty(nbytes, dtype=self.torch.uint8, device=f"cuda:{device}")
        except self.torch.cuda.OutOfMemoryError as exc:
            raise GpuOutOfMemory(str(exc).splitlines()[0]) from None
        self.held.append(block)
        return block

    def release(self) -> None:
        self.held.clear()
        self.torch.cuda.empty_cache()


class CupyAllocator:
    name = "cupy"

    def __init__(self) -> None:
        import cupy
        self.cupy, self.held = cupy, []

    def free_bytes(self, device: int) -> int:
        with self.cupy.cuda.Device(device):
            return int(self.cupy.cuda.runtime.memGetInfo()[0])

    def alloc(self, device: int, nbytes: int) -> Any:
        # runtime.malloc, not cupy.empty: the memory pool would keep freed chunks cached.
        with self.cupy.cuda.Device(device):
            try:
                ptr = self.cupy.cuda.runtime.malloc(nbytes)
            except self.cupy.cuda.runtime.CUDARuntimeError as exc:
                raise GpuOutOfMemory(str(exc)) from None
        self.held.append((device, ptr))
        return ptr

    def release(self) -> None:
        for device, ptr in self.held:
            with self.cupy.cuda.Device(device):
                self.cupy.cuda.runtime.free(ptr)
        self.held.clear()


class CudaPythonAllocator:
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart, self.held = cudart, []

    def _check(self, result: tuple) -> tuple:
        if int(result[0]) != 0:
            raise GpuOutOfMemory(f"CUDA runtime error {int(result[0])}")
        return result[1:]

    def free_bytes(self, device: int) -> int:
        self._check(self.cudart.cudaSetDevice(device))
        return int(self._check(self.cudart.cudaMemGetInfo())[0])

    def alloc(self, device: int, nbytes: int) -> Any:
        self._check(self.cudart.cudaSetDevice(device))
        (ptr,) = self._check(self.cudart.cudaMalloc(nbytes))
        self.held.append(ptr)
        return ptr

    def release(self) -> None:
        for ptr in self.held:
            self.cudart.cudaFree(ptr)
        self.held.clear()


class SimAllocator:
    """The testbed's simulated device (omnitrace.gpu.sim): the ledger the recorder reads."""
    name = "sim"

    def __init__(self) -> None:
        from omnitrace.gpu import sim
        self.gpu, self.held = sim.SimGpu(sim.ensure_device()), []

    def free_bytes(self, device: int) -> int:
        return self.gpu.free_memory(device)[0]

    def alloc(self, device: int, nbytes: int) -> Any:
        # No release delay: the hog's memory leaving is not what the matrix measures.
        self.held.append(self.gpu.allocate(device, nbytes, release_delay_s=0.0))
        return self.held[-1]

    def release(self) -> None:
        for allocation in self.held:
            allocation.free()
        self.held.clear()


_REAL = (("torch", TorchAllocator), ("cupy", CupyAllocator), ("cuda", CudaPythonAllocator))


def open_allocator() -> Any:
    """The simulated device when omnitrace.gpu.alloc chooses it (OMNITRACE_SIM_GPU set, or no
    NVIDIA driver); else the first importable CUDA binding that works; else the simulated device."""
    from omnitrace.gpu import alloc
    if alloc.kind() == "sim":
        return SimAllocator()
    for module, cls in _REAL:
        if importlib.util.find_spec(module) is None:
            continue
        try:
            allocator = cls()
            allocator.free_bytes(0)
            return allocator
        except Exception:  # a binding that imports but cannot reach a GPU: try the next one
            continue
    return SimAllocator()
