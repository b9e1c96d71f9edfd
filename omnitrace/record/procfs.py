"""The procfs source (psutil): snapshots of each traced process, and, where BPF cannot run, the
process lifecycle itself by polling /proc.

Snapshots are taken at start, when the kernel source reports a new process, an exec or a rename,
and periodically. In lifecycle (fallback) mode, forks and exits are inferred between polls: a fork
is dated by the process's start time (10 ms clock ticks), an exit by the poll that first saw the
process as a zombie or gone, so exits are only as precise as the poll interval.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import psutil

from omnitrace import events as ev
from omnitrace.procstat import is_running, pid_ns_view, read_stat
from omnitrace.record.cgroup import cgroup_of
from omnitrace.record.source import RecordContext, Source

DEFAULT_SNAPSHOT_INTERVAL_S = 1.0
DEFAULT_LIFECYCLE_INTERVAL_S = 0.02


def snapshot(pid: int, reason: str) -> ev.ProcSnapshot | None:
    """What procfs says of pid now; None when it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            info = proc.as_dict(["ppid", "name", "cmdline", "status", "username"])
            ports = _listening_ports(proc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return _zombie_snapshot(pid, reason)
    except psutil.Error:
        return None
    view = pid_ns_view(pid)
    return ev.ProcSnapshot(
        t=time.monotonic_ns(), pid=pid, ppid=info["ppid"] or 0, name=info["name"] or "",
        cmdline=info["cmdline"] or [], state=info["status"] or "", create_time=_start_ns(pid),
        user=info["username"] or "", ports=ports, reason=reason,
        ns_pid=view[1] if view else None, cgroup=cgroup_of(pid) or "")


def _start_ns(pid: int) -> int | None:
    """The process's start on the monotonic clock, from /proc/PID/stat's start time in clock
    ticks: exact to a tick. psutil's create_time is wall-clock, built on a boot time rounded to
    whole seconds, and lands up to a second off: far enough to look like another process."""
    stat = read_stat(pid)
    return _ticks_to_monotonic_ns(stat[2]) if stat else None


def _zombie_snapshot(pid: int, reason: str) -> ev.ProcSnapshot | None:
    stat = read_stat(pid)
    if stat is None:
        return None
    ppid, state, start_ticks = stat
    return ev.ProcSnapshot(t=time.monotonic_ns(), pid=pid, ppid=ppid, name="",
                           state="zombie" if state == "Z" else state,
                           create_time=_ticks_to_monotonic_ns(start_ticks), reason=reason)


def _listening_ports(proc: psutil.Process) -> list[int]:
    try:
        conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") \
            else proc.connections(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    return sorted({c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr})


class ProcfsSource(Source):
    name = "procfs"

    def __init__(self, interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S, lifecycle: bool = False,
                 lifecycle_interval_s: float = DEFAULT_LIFECYCLE_INTERVAL_S):
        self.interval_s = interval_s
        self.lifecycle = lifecycle
        self.lifecycle_interval_s = lifecycle_interval_s
        self._ctx: RecordContext | None = None
        self._requests: queue.Queue[tuple[int, str]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gone: set[int] = set()
        self._snapshots = 0
        self._lifecycle_events = 0
        self._alive: dict[int, tuple[int, int]] = {}  # lifecycle mode: pid -> (ppid, start ticks)
        self._exited: set[int] = set()

    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        self._ctx = ctx
        ctx.on_process_changed(lambda pid, reason: self._requests.put((pid, reason)))
        return {}

    def start(self, ctx: RecordContext) -> None:
        for pid in ctx.traced_pids():
            self._requests.put((pid, "start"))
        self._spawn(self._snapshot_loop, "procfs-snapshots")
        if self.lifecycle:
            self._spawn(self._lifecycle_loop, "procfs-lifecycle")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self.lifecycle:
            self._lifecycle_poll()  # a last look, so exits just before the stop are not missed

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": "psutil", "snapshot_interval_s": self.interval_s}
        if self.lifecycle:
            info.update(lifecycle=True, precision_ns=int(self.lifecycle_interval_s * 1e9),
                        note="fork/exit inferred by polling /proc; no signals, no exit statuses")
        return info

    def counters(self) -> dict[str, int]:
        return {"events": self._snapshots + self._lifecycle_events, "lost": 0}

    # -- snapshots --------------------------------------------------------------------------
    def _snapshot_loop(self) -> None:
        next_periodic = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            timeout = max(0.0, next_periodic - time.monotonic())
            try:
                pid, reason = self._requests.get(timeout=timeout)
                self._take(pid, reason)
                continue
            except queue.Empty:
                pass
            for pid in sorted(self._ctx.traced_pids() - self._gone):
                self._take(pid, "periodic")
            next_periodic = time.monotonic() + self.interval_s

    def _take(self, pid: int, reason: str) -> None:
        snap = snapshot(pid, reason)
        if snap is None:
            self._gone.add(pid)
            return
        self._snapshots += 1
        self._ctx.emit(snap)

    # -- lifecycle by polling (the fallback when BPF cannot run) ----------------------------
    def _lifecycle_loop(self) -> None:
        while not self._stop.wait(self.lifecycle_interval_s):
            self._lifecycle_poll()

    def _lifecycle_poll(self) -> None:
        now = time.monotonic_ns()
        table = _process_table()
        traced = self._ctx.traced_pids()
        for pid in sorted(table):
            ppid, state, start = table[pid]
            if pid not in self._alive and pid not in self._gone and (pid in traced or ppid in traced):
                self._on_new(pid, ppid, start)
                traced.add(pid)
        for pid, (ppid, start) in list(self._alive.items()):
            row = table.get(pid)
            if row is None or row[2] != start:  # gone (or the pid reused): it was reaped
                self._on_exit(now, pid)
                del self._alive[pid]
                self._gone.add(pid)
                self._emit_lifecycle(ev.Reap(t=now, reaper=ppid, pid=pid))
            elif not is_running(row[1]):
                self._on_exit(now, pid)
            elif row[0] != ppid:
                self._alive[pid] = (row[0], start)
                self._requests.put((pid, "reparent"))

    def _on_new(self, pid: int, ppid: int, start_ticks: int) -> None:
        self._alive[pid] = (ppid, start_ticks)
        self._ctx.add_traced(pid)
        t = _ticks_to_monotonic_ns(start_ticks)
        self._emit_lifecycle(ev.Fork(t=t, pid=pid, tid=pid, ppid=ppid, comm=_comm(pid)))
        self._requests.put((pid, "new"))

    def _on_exit(self, now: int, pid: int) -> None:
        if pid not in self._exited:
            self._exited.add(pid)
            self._emit_lifecycle(ev.Exit(t=now, pid=pid, tid=pid, group_dead=True))

    def _emit_lifecycle(self, event: ev.Event) -> None:
        self._lifecycle_events += 1
        self._ctx.emit(event)

    def adopt_root(self, pid: int) -> None:
        """Lifecycle mode: start following the recorded command (its fork is the recorder's)."""
        stat = read_stat(pid)
        if stat:
            self._alive[pid] = (stat[0], stat[2])
        self._ctx.add_traced(pid)


def _process_table() -> dict[int, tuple[int, str, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat:
                table[int(name)] = stat
    return table


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ticks_to_monotonic_ns(ticks: int) -> int:
    """A /proc start time (ticks since boot) on CLOCK_MONOTONIC (which also counts from boot,
    minus suspended time: equal on servers that never suspend)."""
    return ticks * 1_000_000_000 // _CLK_TCK
