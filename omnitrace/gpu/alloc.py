"""Allocating GPU memory: what the testbed's stages and the OOM hog call.

    handle = allocate(device, nbytes)      # raises omnitrace.gpu.GpuOutOfMemory when it does not fit
    handle.free()
    free, total = free_memory(device)      # like torch.cuda.mem_get_info
    device_count()

Which memory: the simulated device (omnitrace.gpu.sim) when OMNITRACE_SIM_GPU is set, so a test or
demo can force it even on a GPU machine; else real CUDA memory through torch or cupy when one is
installed and a GPU exists; else the simulated device at its default location. `kind()` says which.
"""
from __future__ import annotations

import importlib.util
import os
import time
from functools import lru_cache

from omnitrace.gpu import GpuOutOfMemory, sim


@lru_cache(maxsize=1)
def kind() -> str:
    """'sim', 'torch' or 'cupy'. Probes cheaply first: importing torch costs seconds."""
    if os.environ.get(sim.ENV_VAR) or not os.path.exists("/dev/nvidiactl"):
        return "sim"
    for module in ("torch", "cupy"):
        if importlib.util.find_spec(module) is not None and _cuda_usable(module):
            return module
    return "sim"


def _cuda_usable(module: str) -> bool:
    try:
        if module == "torch":
            import torch
            return torch.cuda.is_available()
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # a broken CUDA install means no CUDA, not a crash
        return False


@lru_cache(maxsize=1)
def _sim() -> sim.SimGpu:
    return sim.SimGpu(sim.ensure_device())


class CudaAllocation:
    def __init__(self, buffer, nbytes: int):
        self._buffer = buffer
        self.nbytes = nbytes

    def free(self) -> None:
        self._buffer = None
        if kind() == "torch":
            import torch
            torch.cuda.empty_cache()  # hand it back to the driver, or other processes never see it


def allocate(device: int, nbytes: int, release_delay_s: float | None = None):
    """nbytes of device memory held by this process until .free() or exit. release_delay_s (the
    simulated device only) is how long after this process dies the memory stays taken."""
    backend = kind()
    if backend == "sim":
        return _sim().allocate(device, nbytes, release_delay_s)
    if backend == "torch":
        import torch
        try:
            handle = CudaAllocation(torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{device}"),
                                    nbytes)
        except torch.cuda.OutOfMemoryError as exc:
            raise GpuOutOfMemory(str(exc)) from exc
        if release_delay_s:
            hold_context_after_exit(release_delay_s)
        return handle
    import cupy
    with cupy.cuda.Device(device):
        try:
            return CudaAllocation(cupy.cuda.Memory(nbytes), nbytes)  # cudaMalloc, no pool
        except cupy.cuda.memory.OutOfMemoryError as exc:
            raise GpuOutOfMemory(str(exc)) from exc


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


def free_memory(device: int) -> tuple[int, int]:
    """(free_bytes, total_bytes) on `device`."""
    backend = kind()
    if backend == "sim":
        return _sim().free_memory(device)
    if backend == "torch":
        import torch
        return torch.cuda.mem_get_info(device)
    import cupy
    with cupy.cuda.Device(device):
        return cupy.cuda.runtime.memGetInfo()


def device_count() -> int:
    backend = kind()
    if backend == "sim":
        return _sim().device_count()
    if backend == "torch":
        import torch
        return torch.cuda.device_count()
    import cupy
    return cupy.cuda.runtime.getDeviceCount()
