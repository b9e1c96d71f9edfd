"""The simulated GPU device: GPU memory as a shared ledger of files, for machines without a GPU.

Where:  a directory named by OMNITRACE_SIM_GPU (default /dev/shm/omnitrace-sim-gpu), holding
    device.json        {"device_count": 2, "capacity_bytes": 17179869184, "release_delay_s": 0.1}
    <device>/.lock     serialises allocations, so two processes cannot both take the last bytes
    <device>/<pid>-<start>-<nbytes>-<delay_ms>-<tag>-<ns>            a live allocation
    <device>/<pid>-<start>-<nbytes>-<delay_ms>-<tag>-<ns>~<dead_ns>  its owner was seen dead at dead_ns
    `pid` is the owner's pid in its own pid namespace, `ns` that namespace as "<st_dev>.<st_ino>" of
    /proc/self/ns/pid (an entry without `-<ns>`, from an older writer, is in the reader's namespace).

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
- Pids as NVML reports them: in the reader's pid namespace. The ledger can be bind-mounted into a
  container (scripts/container-image.sh --run-args does), whose processes only know their
  namespace pid; a reader outside translates it to its own pid by the NSpid of /proc/*/status
  (omnitrace.procstat). An owner it cannot translate is never given a pid that might be
  another process's: its memory counts in memory() but in no pid of processes(), and its entry is
  left alone unless the reader can tell the owner is gone (see HostPids).

Reading costs one directory scan plus one /proc/<pid>/stat read per entry; no file locks. A namespaced
owner costs one scan of /proc the first time a reader meets it, then the same stat read.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from omnitrace.gpu import GpuBackendError, GpuOutOfMemory
from omnitrace.procstat import is_running, own_pid_ns, pid_ns_view, read_stat

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


# PROC_PID_INIT_INO: the kernel gives the initial pid namespace this inode. A reader in it sees
# every process of every namespace, so an owner it cannot find is gone.
INIT_PID_NS_INO = 0xEFFFFFFC


def _owner_start(pid: int | str) -> int | None:
    """Start time of a live, non-zombie process; None when it is gone or a zombie."""
    stat = read_stat(pid)
    if stat is None or not is_running(stat[1]):
        return None
    return stat[2]


@dataclass(frozen=True)
class Entry:
    """One ledger file's name, parsed."""
    pid: int                        # in the owner's pid namespace
    start: int
    nbytes: int
    delay_ms: int
    ns: tuple[int, int] | None      # (st_dev, st_ino) of the owner's pid namespace
    dead_ns: int | None             # when a reader first saw the owner gone

    @property
    def owner(self) -> tuple:
        """The owning process, whatever reader looks: its namespace, namespace pid and start."""
        return self.ns, self.pid, self.start


def parse_entry(name: str) -> Entry | None:
    """The entry a ledger file name describes; None for a name that is not one (skipped, so a
    stray file in the directory does not stop the GPU source)."""
    name, _, dead = name.partition("~")
    fields = name.split("-")
    try:
        pid, start, nbytes, delay_ms = (int(f) for f in fields[:4])
        ns = tuple(int(n) for n in fields[5].split(".")) if len(fields) == 6 else None
        dead_ns = int(dead) if dead else None
    except ValueError:
        return None
    if len(fields) not in (5, 6) or (ns is not None and len(ns) != 2):
        return None
    return Entry(pid, start, nbytes, delay_ms, ns, dead_ns)


class HostPids:
    """The reader's pid for a ledger entry's owner, as NVML gives host pids for container
    processes. lookup() answers (pid or None, alive):
    - (pid, True): the owner runs as `pid` here;
    - (pid or None, False): it is gone (pid when it was translated while it ran, so its memory
      stays attributed for the release delay);
    - (None, None): it cannot be told: a namespace this reader cannot see (it is not in the initial
      one, and never saw a process of it). The entry is counted but given no pid and never removed.
    """

    def __init__(self):
        self.own = own_pid_ns()
        self._hosts: dict[tuple, int] = {}   # Entry.owner -> our pid; one per owning process
        self._visible: set[int] = set()      # namespaces a /proc scan showed us
        self._scanned: dict[tuple[int, int], int] = {}   # the last scan (see _scan)
        self._lock = threading.Lock()        # the GPU source reads from two threads

    def lookup(self, entry: Entry) -> tuple[int | None, bool | None]:
        if entry.ns is None or entry.ns == self.own:
            return entry.pid, _owner_start(entry.pid) == entry.start
        with self._lock:
            host = self._hosts.get(entry.owner) or self._translate(entry)
        if host is None:
            return None, None if self._might_live(entry.ns) else False
        return host, _owner_start(host) == entry.start

    def pid_of(self, entry: Entry) -> int | None:
        """Its pid here if known, without looking for it: an owner already seen dead."""
        if entry.ns is None or entry.ns == self.own:
            return entry.pid
        return self._hosts.get(entry.owner)

    def _translate(self, entry: Entry) -> int | None:
        """Our pid for the entry's owner by the last /proc scan, scanning again when that does not
        have it; kept only if its start time is the entry's (a namespace pid reused since is
        another process)."""
        where = (entry.ns[1], entry.pid)
        if not self._starts_as(self._scanned.get(where), entry):
            self._scan()
        host = self._scanned.get(where)
        if not self._starts_as(host, entry):
            return None
        self._hosts[entry.owner] = host
        return host

    def _scan(self) -> None:
        """(namespace inode, namespace pid) -> our pid for every process in another namespace."""
        self._scanned = {}
        for name in os.listdir("/proc"):
            view = pid_ns_view(int(name)) if name.isdigit() else None
            if view is not None:
                self._scanned[view] = int(name)
                self._visible.add(view[0])

    @staticmethod
    def _starts_as(pid: int | None, entry: Entry) -> bool:
        stat = read_stat(pid) if pid else None
        return stat is not None and stat[2] == entry.start

    def _might_live(self, ns: tuple[int, int]) -> bool:
        """Whether an owner not found in /proc may still run where this reader cannot look."""
        if self.own is None or ns[0] != self.own[0]:
            return True   # another nsfs device: not a namespace of this machine's kernel as we see it
        return self.own[1] != INIT_PID_NS_INO and ns[1] not in self._visible


def _ns_field() -> str:
    """'-<st_dev>.<st_ino>' of this process's pid namespace; '' where it cannot be read (the
    entry then reads as the reader's namespace, as before namespaces were recorded)."""
    ns = own_pid_ns()
    return f"-{ns[0]}.{ns[1]}" if ns else ""


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
        self._hosts = HostPids()
        for d in range(self.count):
            (self.path / str(d)).mkdir(exist_ok=True)

    # -- reading (GpuBackend) -------------------------------------------------------------
    def device_count(self) -> int:
        return self.count

    def memory(self, device: int) -> tuple[int, int]:
        held, unattributed = self._held(device)
        return sum(held.values()) + unattributed, self.capacity

    def processes(self, device: int) -> dict[int, int]:
        """Bytes per pid of this reader's namespace; an owner that cannot be translated to one is
        left out (its bytes still count in memory(), as NVML counts memory it shows no pid for)."""
        return self._held(device)[0]

    def _held(self, device: int) -> tuple[dict[int, int], int]:
        """(bytes per pid, bytes of owners with no pid here) counted now on `device`."""
        held: dict[int, int] = {}
        unattributed = 0
        now = time.monotonic_ns()
        directory = self._dir(device)
        for file in os.scandir(directory):
            entry = parse_entry(file.name)
            if entry is None:
                continue
            pid = self._counted_for(entry, file.path, now)
            if pid is None:
                continue
            if pid:
                held[pid] = held.get(pid, 0) + entry.nbytes
            else:
                unattributed += entry.nbytes
        return held, unattributed

    def _counted_for(self, entry: Entry, path: str, now: int) -> int | None:
        """The pid an entry counts for now, 0 when it counts for no pid we can name, None when it
        no longer counts (it is removed once its release delay has passed)."""
        if entry.dead_ns is None:
            pid, alive = self._hosts.lookup(entry)
            if alive is not False:
                return pid or 0
            entry = self._stamp_dead(entry, path, now)
        if now < entry.dead_ns + entry.delay_ms * 1_000_000:
            return self._hosts.pid_of(entry) or 0
        try:
            os.unlink(path.partition("~")[0] + f"~{entry.dead_ns}")
        except FileNotFoundError:
            pass
        return None

    @staticmethod
    def _stamp_dead(entry: Entry, path: str, now: int) -> Entry:
        try:
            os.rename(path, f"{path}~{now}")
        except FileNotFoundError:
            pass  # freed meanwhile, or another reader stamped it first
        return dataclasses.replace(entry, dead_ns=now)

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
            used = self.memory(device)[0]
            if used + nbytes > self.capacity:
                raise GpuOutOfMemory(
                    f"CUDA out of memory. Tried to allocate {nbytes / MiB:.2f} MiB. GPU {device} "
                    f"has a total capacity of {self.capacity / GiB:.2f} GiB of which "
                    f"{(self.capacity - used) / MiB:.2f} MiB is free. (simulated device "
                    f"{self.path})")
            path = directory / (f"{pid}-{_owner_start('self')}-{nbytes}-{round(delay * 1000)}-"
                                f"{uuid.uuid4().hex[:8]}{_ns_field()}")
            path.touch(exist_ok=False)
        return SimAllocation(path, nbytes)

    def _dir(self, device: int) -> Path:
        if not 0 <= device < self.count:
            raise GpuBackendError(f"simulated GPU {self.path} has no device {device} "
                                  f"(it has {self.count})")
        return self.path / str(device)
