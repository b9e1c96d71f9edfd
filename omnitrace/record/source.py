"""The one shape every recorder source has (kernel, procfs, gpu, http), and what the recorder
offers them.

Life cycle, driven by omnitrace.record.recorder.Recorder:
    prepare(ctx)  before the command starts: set up, return environment variables for the command
    start(ctx)    the command is running (ctx.root_pid is set): begin emitting events
    stop()        the command ended or the recorder is told to finish; drain and stop threads
    describe()    for the header: {"backend": ..., "precision_ns": ..., ...}
    counters()    for the footer: {"events": n, "lost": n, ...}
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from omnitrace.events import Event

# A span of this name, with omnitrace.server.url (and .pid), tells the recorder where the server it
# records answers: the scenario driver and the pytest plugin send one once they know (a container's
# host port is known only after the runtime mapped it), and the health prober follows it.
SERVER_SPAN = "omnitrace.server"


class SourceUnavailable(Exception):
    """A source cannot run here; str() says why and what would fix it."""


class RecordContext:
    """What sources share during one recording. Thread-safe where it matters."""

    def __init__(self, emit: Callable[[Event], None]):
        self._emit = emit
        self._lock = threading.Lock()
        self._traced: set[int] = set()
        self._fatal_signal_listeners: list[Callable[[int, int], None]] = []
        self._process_listeners: list[Callable[[int, str], None]] = []
        self._server_listeners: list[Callable[[str, int | None], None]] = []
        self.root_pid: int | None = None
        self.trace_all = False
        self._ns_hosts: dict[tuple[int, int], int] = {}  # (pid ns inode, pid there) -> host pid
        self._ns_keys: dict[int, tuple[int, int]] = {}

    def emit(self, event: Event) -> None:
        self._emit(event)

    # The traced set as user space knows it: the kernel source keeps it up to date from fork
    # events; other sources (procfs snapshots, GPU per-process filter) read it.
    def add_traced(self, pid: int) -> None:
        with self._lock:
            self._traced.add(pid)

    def traced_pids(self) -> set[int]:
        with self._lock:
            return set(self._traced)

    def is_traced(self, pid: int) -> bool:
        with self._lock:
            return self.trace_all or pid in self._traced

    # Processes in other pid namespaces, as the sources met them: a reaper inside a container
    # names its child by the namespace's pid, which the kernel source translates back with this.
    def note_ns_pid(self, host_pid: int, ns_inode: int, ns_pid: int) -> None:
        with self._lock:
            self._ns_hosts[(ns_inode, ns_pid)] = host_pid
            self._ns_keys[host_pid] = (ns_inode, ns_pid)

    def ns_of(self, host_pid: int) -> int | None:
        """The pid namespace (inode) a process was met in, also once it has gone from /proc."""
        with self._lock:
            key = self._ns_keys.get(host_pid)
            return key[0] if key else None

    def take_host_pid(self, ns_inode: int, ns_pid: int) -> int | None:
        """The host pid of a process being reaped; forgotten, as its namespace pid is free now."""
        with self._lock:
            host = self._ns_hosts.pop((ns_inode, ns_pid), None)
            self._ns_keys.pop(host, None)
            return host

    def forget_ns_pid(self, host_pid: int) -> None:
        with self._lock:
            key = self._ns_keys.pop(host_pid, None)
            if key is not None and self._ns_hosts.get(key) == host_pid:
                del self._ns_hosts[key]

    def on_fatal_signal(self, listener: Callable[[int, int], None]) -> None:
        """listener(t_ns, pid) runs when a fatal signal reaches a traced process (the GPU source
        samples faster for a while after one)."""
        self._fatal_signal_listeners.append(listener)

    def fatal_signal(self, t: int, pid: int) -> None:
        for listener in list(self._fatal_signal_listeners):
            listener(t, pid)

    def on_process_changed(self, listener: Callable[[int, str], None]) -> None:
        """listener(pid, reason) runs when a traced process appears ("new"), execs ("exec") or
        is renamed ("rename"): the procfs source takes a fresh snapshot then."""
        self._process_listeners.append(listener)

    def process_changed(self, pid: int, reason: str) -> None:
        for listener in list(self._process_listeners):
            listener(pid, reason)

    def on_server_announced(self, listener: Callable[[str, int | None], None]) -> None:
        """listener(url, pid) runs when the traced command says where its server answers (a
        SERVER_SPAN received over OTLP): the health prober probes there from then on."""
        self._server_listeners.append(listener)

    def server_announced(self, url: str, pid: int | None) -> None:
        for listener in list(self._server_listeners):
            listener(url, pid)


class Source:
    name = "source"

    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        return {}

    def start(self, ctx: RecordContext) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, int]:
        return {}
