"""The NVML backend: real NVIDIA GPUs read through pynvml (the `nvidia-ml-py` package).

Each query is a plain driver call of a few microseconds (about 5 us on an H200), so the recorder
can sample device memory at hundreds of Hz. Every NVML failure surfaces as GpuBackendError whose
message names the device and the NVML error, so the recorder can write it down and go on.
"""
from __future__ import annotations

from omnitrace.gpu import GpuBackendError

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a broken install should read clearly
    pynvml = None


class NvmlBackend:
    name = "nvml"

    def __init__(self) -> None:
        if pynvml is None:
            raise GpuBackendError("NVML is unavailable: the nvidia-ml-py package is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuBackendError(f"NVML did not start ({exc}): no NVIDIA driver here?") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
            self.names = [_text(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise GpuBackendError(f"NVML could not list the GPUs: {exc}") from None
        # v2 memory info reports `used` without the driver's reserved memory, which is what
        # "memory came back" means; drivers before 510 lack it, and then v1 is the answer.
        self.memory_api = {i: "v2" for i in range(count)}
        self._process_queries = [pynvml.nvmlDeviceGetComputeRunningProcesses,
                                 pynvml.nvmlDeviceGetGraphicsRunningProcesses]

    def device_count(self) -> int:
        return len(self._handles)

    def memory(self, device: int) -> tuple[int, int]:
        handle = self._handle(device)
        if self.memory_api[device] == "v2":
            try:
                info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
                return int(info.used), int(info.total)
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NotSupported,
                    pynvml.NVMLError_ArgumentVersionMismatch):
                self.memory_api[device] = "v1"
            except pynvml.NVMLError as exc:
                raise GpuBackendError(f"GPU {device}: memory query failed: {exc}") from None
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError as exc:
            raise GpuBackendError(f"GPU {device}: memory query failed: {exc}") from None
        return int(info.used), int(info.total)

    def processes(self, device: int) -> dict[int, int]:
        """Compute and graphics contexts on the device: {pid: bytes}. A process with both kinds
        appears in both lists with its one figure, so the larger is kept, not the sum."""
        handle = self._handle(device)
        held: dict[int, int] = {}
        for query in self._process_queries:
            try:
                entries = query(handle)
            except pynvml.NVMLError_NotSupported:
                continue  # e.g. graphics processes on a compute-only board
            except pynvml.NVMLError as exc:
                raise GpuBackendError(f"GPU {device}: process query failed: {exc}") from None
            for entry in entries:
                used = entry.usedGpuMemory or 0  # None: the driver does not know (WDDM, MIG)
                held[int(entry.pid)] = max(held.get(int(entry.pid), 0), int(used))
        return held

    def describe(self) -> dict[str, object]:
        return {"driver": self.driver, "devices": self.names,
                "memory_api": sorted(set(self.memory_api.values()))}

    def close(self) -> None:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass

    def _handle(self, device: int):
        try:
            return self._handles[device]
        except IndexError:
            raise GpuBackendError(f"GPU {device} does not exist "
                                  f"(NVML sees {len(self._handles)})") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
