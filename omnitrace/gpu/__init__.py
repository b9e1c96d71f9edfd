"""GPU memory, one small interface, several backends (NVML on real GPUs; the testbed's simulated
device elsewhere). The recorder's GPU source, the OOM hog and the testbed all go through it.

Reading (the recorder):
    backend.device_count() -> int
    backend.memory(device) -> (used_bytes, total_bytes)
    backend.processes(device) -> {pid: used_bytes}
    backend.name -> "nvml" | "sim"
    backend.close()

Backends live in omnitrace/gpu/<name>.py; omnitrace.gpu.open_backend picks one.
"""
from __future__ import annotations

from typing import Protocol


class GpuBackendError(Exception):
    """The backend could not be opened or a query failed; str() says why."""


class GpuOutOfMemory(Exception):
    """An allocation did not fit: the simulated device raises it as CUDA raises its OOM."""


class GpuBackend(Protocol):
    name: str

    def device_count(self) -> int: ...

    def memory(self, device: int) -> tuple[int, int]: ...

    def processes(self, device: int) -> dict[int, int]: ...

    def close(self) -> None: ...
