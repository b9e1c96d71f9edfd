"""Whether processes hold GPU memory now, read through the recorder's GPU backend (NVML, or the
simulated device when OMNITRACE_SIM_GPU is set). Used to settle a row (memory can outlive its
process) and to tell an OOM test it does not apply to a server that holds no device memory."""
from __future__ import annotations

from omnitrace.errors import OmnitraceError
from omnitrace.gpu import GpuBackendError

_backend = None   # opened on first use; False when this machine has none


def open_gpu_backend():
    """The recorder's GPU backend, opened once per process; False when this machine has none."""
    global _backend
    if _backend is None:
        from omnitrace.record.gpu import choose_backend
        try:
            _backend = choose_backend("auto")[0] or False
        except OmnitraceError:
            _backend = False
    return _backend


def gpu_held_by(pids: set[int]) -> bool:
    """True when any of `pids` is in a device's process list. A failing query answers False: a
    row's window still bounds whatever waits on this."""
    backend = open_gpu_backend()
    if not backend:
        return False
    try:
        return any(pids & backend.processes(d).keys() for d in range(backend.device_count()))
    except GpuBackendError:
        return False
