"""The GPU source: device memory and the processes holding it, sampled through a GpuBackend (NVML
on real GPUs, the testbed's simulated device elsewhere) and written only when a value changes.

Two sampling threads, because the two questions cost differently: device memory is cheap (a few
microseconds a query), so it runs fast (200 Hz, 1 kHz for a few seconds after a fatal signal reaches
a traced process, which is when memory is about to come back); the per-process list takes a global
driver lock on some drivers, so it runs slower (20 Hz). The first sample, taken in prepare() before
the command starts, is the baseline. A failing query becomes a GpuError event and sampling goes on:
a lost GPU must not end the recording of everything else.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from omnitrace.errors import OmnitraceError
from omnitrace.events import GpuError, GpuMemory, GpuProcess
from omnitrace.gpu import GpuBackend, GpuBackendError
from omnitrace.gpu.sim import ENV_VAR as SIM_ENV_VAR
from omnitrace.record.source import RecordContext, Source

MEMORY_HZ = 200.0
PROCESS_HZ = 20.0
BURST_HZ = 1000.0
BURST_S = 3.0


class GpuSource(Source):
    name = "gpu"

    def __init__(self, backend: GpuBackend, *, memory_hz: float = MEMORY_HZ,
                 process_hz: float = PROCESS_HZ, burst_hz: float = BURST_HZ,
                 burst_s: float = BURST_S, chosen: str = ""):
        self.backend = backend
        self.memory_period_ns = int(1e9 / memory_hz)
        self.process_period_ns = int(1e9 / process_hz)
        self.burst_period_ns = int(1e9 / burst_hz)
        self.burst_ns = int(burst_s * 1e9)
        self.chosen = chosen  # why this backend: goes into the header
        self._ctx: RecordContext | None = None
        self._devices = 0
        self._last_memory: dict[int, tuple[int, int]] = {}
        self._last_processes: dict[int, dict[int, int]] = {}
        self._last_error: dict[tuple[int, str], str] = {}
        self._burst_until = 0
        self._stopping = False
        self._wake_memory = threading.Event()
        self._wake_processes = threading.Event()
        self._threads: list[threading.Thread] = []
        self._count = {"events": 0, "memory_samples": 0, "process_samples": 0, "errors": 0,
                       "bursts": 0, "max_memory_gap_ns": 0}

    # --- Source life cycle ---

    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        self._ctx = ctx
        try:
            self._devices = self.backend.device_count()
        except GpuBackendError as exc:
            self._error(time.monotonic_ns(), -1, "count", str(exc))
        ctx.on_fatal_signal(self._on_fatal_signal)
        # Baseline before the command exists, so "back to baseline" has a reference point.
        for device in range(self._devices):
            self._sample_memory(device)
            self._sample_processes(device)
        self._threads = [
            threading.Thread(target=self._run, args=(self._sample_all_memory, self._memory_period,
                                                     self._wake_memory, True),
                             name="gpu-memory", daemon=True),
            threading.Thread(target=self._run, args=(self._sample_all_processes,
                                                     lambda: self.process_period_ns,
                                                     self._wake_processes, False),
                             name="gpu-processes", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return {}

    def start(self, ctx: RecordContext) -> None:
        pass  # sampling already runs since prepare(): the baseline must predate the command

    def stop(self) -> None:
        self._stopping = True
        self._wake_memory.set()
        self._wake_processes.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.backend.close()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.backend.name, "chosen": self.chosen, "gpus": self._devices,
            "memory_hz": round(1e9 / self.memory_period_ns, 3),
            "process_hz": round(1e9 / self.process_period_ns, 3),
            "burst_hz": round(1e9 / self.burst_period_ns, 3), "burst_s": self.burst_ns / 1e9,
            "precision_ns": self.memory_period_ns,
        }
        extra = getattr(self.backend, "describe", None)
        if callable(extra):
            info.update(extra())
        return info

    def counters(self) -> dict[str, int]:
        return dict(self._count)

    # --- sampling ---

    def _on_fatal_signal(self, t: int, pid: int) -> None:
        self._burst_until = max(self._burst_until, time.monotonic_ns() + self.burst_ns)
        self._count["bursts"] += 1
        self._wake_memory.set()  # the first fast sample now, not at the end of the slow period

    def _memory_period(self) -> int:
        if time.monotonic_ns() < self._burst_until:
            return self.burst_period_ns
        return self.memory_period_ns

    def _run(self, sample: Callable[[], None], period: Callable[[], int],
             wake: threading.Event, track_gap: bool) -> None:
        due = time.monotonic_ns()
        last = None
        while not self._stopping:
            now = time.monotonic_ns()
            if track_gap and last is not None:
                self._count["max_memory_gap_ns"] = max(self._count["max_memory_gap_ns"], now - last)
            last = now
            sample()
            # A fixed schedule (not "sleep a period after each sample") keeps the rate honest;
            # when the machine stalls the sampler, it resumes instead of racing to catch up.
            due = max(due + period(), time.monotonic_ns())
            if wake.wait((due - time.monotonic_ns()) / 1e9):
                wake.clear()
                due = time.monotonic_ns()

    def _sample_all_memory(self) -> None:
        for device in range(self._devices):
            self._sample_memory(device)

    def _sample_all_processes(self) -> None:
        for device in range(self._devices):
            self._sample_processes(device)

    def _sample_memory(self, device: int) -> None:
        before = time.monotonic_ns()
        try:
            used, total = self.backend.memory(device)
        except Exception as exc:  # noqa: BLE001 - any failure is evidence; a dead sampler is not
            self._error(before, device, "memory", _message(exc))
            self._last_memory.pop(device, None)  # after recovery, the first value is news
            return
        t = (before + time.monotonic_ns()) // 2  # the value held somewhere inside the call
        self._count["memory_samples"] += 1
        self._last_error.pop((device, "memory"), None)
        if self._last_memory.get(device) != (used, total):
            self._last_memory[device] = (used, total)
            self._emit(GpuMemory(t=t, device=device, used=used, total=total))

    def _sample_processes(self, device: int) -> None:
        before = time.monotonic_ns()
        try:
            held = self.backend.processes(device)
        except Exception as exc:  # noqa: BLE001 - any failure is evidence; a dead sampler is not
            self._error(before, device, "processes", _message(exc))
            return  # keep the last list: a failed query says nothing about who left
        t = (before + time.monotonic_ns()) // 2
        self._count["process_samples"] += 1
        self._last_error.pop((device, "processes"), None)
        previous = self._last_processes.get(device, {})
        for pid, used in held.items():
            if previous.get(pid) != used:
                self._emit(GpuProcess(t=t, device=device, pid=pid, used=used))
        for pid in previous.keys() - held.keys():
            self._emit(GpuProcess(t=t, device=device, pid=pid, used=0))
        self._last_processes[device] = held

    def _error(self, t: int, device: int, query: str, message: str) -> None:
        self._count["errors"] += 1
        # One event per distinct failure, not one per sample: a lost GPU fails 200 times a second.
        if self._last_error.get((device, query)) != message:
            self._last_error[(device, query)] = message
            self._emit(GpuError(t=t, device=device, message=message))

    def _emit(self, event) -> None:
        self._count["events"] += 1
        assert self._ctx is not None
        self._ctx.emit(event)


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, GpuBackendError) else f"{type(exc).__name__}: {exc}"


# --- choosing a backend ---

def open_nvml() -> GpuBackend:
    from omnitrace.gpu.nvml import NvmlBackend
    return NvmlBackend()


def open_sim() -> GpuBackend:
    from omnitrace.gpu.sim import SimGpu
    return SimGpu()  # the device named by OMNITRACE_SIM_GPU, as the testbed set it up


def choose_backend(mode: str = "auto") -> tuple[GpuBackend | None, str]:
    """The backend for `--gpu auto|nvml|sim|off` and why it was chosen (the header keeps the why).
    auto: NVML when it sees a GPU, else the simulated device when one is set up, else none
    (simulated first when OMNITRACE_SIM_GPU is set, as omnitrace.gpu.alloc decides). An
    explicit nvml or sim that cannot open raises OmnitraceError."""
    if mode == "off":
        return None, "--gpu off"
    if mode in ("nvml", "sim"):
        opener = open_nvml if mode == "nvml" else open_sim
        try:
            return opener(), f"--gpu {mode}"
        except (GpuBackendError, ImportError) as exc:
            raise OmnitraceError(f"--gpu {mode}: {exc}; use --gpu auto or --gpu off") from None
    if mode != "auto":
        raise OmnitraceError(f"--gpu {mode!r}: expected one of auto, nvml, sim, off")
    reasons = []
    openers = [("nvml", open_nvml), ("sim", open_sim)]
    if os.environ.get(SIM_ENV_VAR):
        openers.reverse()  # the testbed's stages allocate there too (omnitrace.gpu.alloc)
        reasons.append(f"{SIM_ENV_VAR} is set")
        # The variable names the device; the recorder may start before the testbed that would
        # create it (the first row of a matrix run): create it now, with the same defaults.
        from omnitrace.gpu.sim import ensure_device
        ensure_device()
    for name, opener in openers:
        try:
            backend = opener()
        except (GpuBackendError, ImportError) as exc:
            reasons.append(f"{name}: {exc}")
            continue
        if backend.device_count() > 0:
            return backend, "auto: " + "; ".join(reasons + [f"{name} chosen"])
        backend.close()
        reasons.append(f"{name}: no devices")
    return None, "auto: " + "; ".join(reasons)


def make_gpu_source(mode: str = "auto", *, memory_hz: float = MEMORY_HZ,
                    process_hz: float = PROCESS_HZ, burst_hz: float = BURST_HZ,
                    burst_s: float = BURST_S) -> GpuSource | None:
    """The GPU source for `--gpu MODE`, or None where there is no GPU to watch (see
    choose_backend for the reason)."""
    backend, why = choose_backend(mode)
    if backend is None:
        return None
    return GpuSource(backend, memory_hz=memory_hz, process_hz=process_hz, burst_hz=burst_hz,
                     burst_s=burst_s, chosen=why)
