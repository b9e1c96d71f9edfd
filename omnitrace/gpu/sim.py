"""The simulated GPU device: GPU memory as a shared ledger of files, for machines without a GPU.

Where:  a directory named by OMNITRACE_SIM_GPU (default /dev/shm/omnitrace-sim-gpu), holding
    device.json        {"device_count": 2, "capacity_bytes": 17179869184, "release_delay_s": 0.1}
    <device>/.lock     serialises allocations, so two processes cannot both take the last bytes
    <device>/<pid>-<start>-<nbytes>-<delay_ms>-<tag>            a live allocation
    <device>/<pid>-<start>-<nbytes>-<delay_ms>-<tag>~<dead_ns>  its owner was seen dead at dead_ns

Rules, as a driver behaves:
- An allocation counts while its owner process is alive. `start` is the owner's start time (field
  22 of /proc/<pid>/stat), so a reused pid never inherits memory.
- A zombie counts as dead: on a real GPU the memory goes while the killed process is still an
  unreaped zombie.
- After the owner dies the memory stays counted `delay_ms` more (100 ms as measured on an H200;
  per allocation, so the testbed's slow-release defect can make it seconds). Readers cannot know
  when a process exited, only when they first saw it gone: that first sighting (CLOCK_MONOTONIC,
  shared by all processes) is stamped into the file name so every reader agrees. The recorder polls
  at 200 Hz, which makes the stamp at most 5 ms late.

Reading costs one directory scan plus one /proc/<pid>/stat read per owner; no locks.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from omnitrace.gpu import GpuBackendError, GpuOutOfMemory
from omnitrace.procstat import is_running, read_stat

ENV_VAR = "OMNITRACE_SIM_GPU"
DEFAULT_DIR = "/dev/shm/omnitrace-sim-gpu"
GiB = 1 << 30
MiB = 1 << 20
DEFAULT_DEVICE = {"device_count": 2, "capacity_bytes": 16 * GiB, "release_delay_s": 0.1}


def location() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def ensure_device(path: Path | str | None = None, **settings) -> Path:
    """Create the device at `path` (default: location()) unless it exists; returns its directory.
    An existing device.json is kept as it is: several processes share one device."""
    path = Path(path) if path else location()
    config = path / "device.json"
    if not config.exists():
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".device.json.{os.getpid()}"
        tmp.write_text(json.dumps({**DEFAULT_DEVICE, **settings}))
        os.replace(tmp, config)  # atomic: a concurrent reader sees all or nothing
    return path


def _owner_start(pid: int) -> int | None:
    """Start time of a live, non-zombie process; None when it is gone or a zombie."""
    stat = read_stat(pid)
    if stat is None or not is_running(stat[1]):
        return None
    return stat[2]


@dataclass
class SimAllocation:
    path: Path
    nbytes: int

    def free(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SimGpu:
    """GpuBackend over the ledger, plus the allocating side the stages and the OOM hog use."""

    name = "sim"

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else location()
        try:
            config = json.loads((self.path / "device.json").read_text())
        except (OSError, ValueError) as exc:
            raise GpuBackendError(
                f"no simulated GPU at {self.path} ({exc}); start `omnitrace testbed serve` "
                f"or set {ENV_VAR} to a directory made by omnitrace.gpu.sim.ensure_device") from exc
        self.count = int(config["device_count"])
        self.capacity = int(config["capacity_bytes"])
        self.release_delay_s = float(config.get("release_delay_s", 0.1))
        for d in range(self.count):
            (self.path / str(d)).mkdir(exist_ok=True)

    # -- reading (GpuBackend) -------------------------------------------------------------
    def device_count(self) -> int:
        return self.count

    def memory(self, device: int) -> tuple[int, int]:
        return sum(self.processes(device).values()), self.capacity

    def processes(self, device: int) -> dict[int, int]:
        held: dict[int, int] = {}
        starts: dict[int, int | None] = {}
        now = time.monotonic_ns()
        directory = self._dir(device)
        for entry in os.scandir(directory):
            if entry.name.startswith("."):
                continue
            name, _, dead_ns = entry.name.partition("~")
            pid_s, start_s, nbytes_s, delay_ms_s, _tag = name.split("-")
            pid = int(pid_s)
            if not dead_ns:
                if pid not in starts:
                    starts[pid] = _owner_start(pid)
                if starts[pid] == int(start_s):
                    held[pid] = held.get(pid, 0) + int(nbytes_s)
                    continue
                dead_ns = str(now)
                try:
                    os.rename(entry.path, f"{entry.path}~{dead_ns}")
                except FileNotFoundError:
                    pass  # freed meanwhile, or another reader stamped it first
            if now < int(dead_ns) + int(delay_ms_s) * 1_000_000:
                held[pid] = held.get(pid, 0) + int(nbytes_s)
            else:
                try:
                    os.unlink(f"{directory}/{name}~{dead_ns}")
                except FileNotFoundError:
                    pass
        return held

    def close(self) -> None:
        pass

    # -- allocating -----------------------------------------------------------------------
    def free_memory(self, device: int) -> tuple[int, int]:
        used, total = self.memory(device)
        return max(total - used, 0), total

    def allocate(self, device: int, nbytes: int,
                 release_delay_s: float | None = None) -> SimAllocation:
        """Take nbytes on `device` for this process; GpuOutOfMemory when it does not fit."""
        delay = self.release_delay_s if release_delay_s is None else release_delay_s
        pid = os.getpid()
        directory = self._dir(device)
        with open(directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = sum(self.processes(device).values())
            if used + nbytes > self.capacity:
                raise GpuOutOfMemory(
                    f"CUDA out of memory. Tried to allocate {nbytes / MiB:.2f} MiB. GPU {device} "
                    f"has a total capacity of {self.capacity / GiB:.2f} GiB of which "
                    f"{(self.capacity - used) / MiB:.2f} MiB is free. (simulated device "
                    f"{self.path})")
            path = directory / (f"{pid}-{_owner_start(pid)}-{nbytes}-{round(delay * 1000)}-"
                                f"{uuid.uuid4().hex[:8]}")
            path.touch(exist_ok=False)
        return SimAllocation(path, nbytes)

    def _dir(self, device: int) -> Path:
        if not 0 <= device < self.count:
            raise GpuBackendError(f"simulated GPU {self.path} has no device {device} "
                                  f"(it has {self.count})")
        return self.path / str(device)
