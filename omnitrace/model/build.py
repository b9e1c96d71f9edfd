"""Rebuild process lifetimes, GPU series, HTTP requests and marks from a Timeline in one pass.

Events arrive sorted by time. Each handler updates the current incarnation of a pid; a fork of a
pid whose last incarnation already exited starts a new Process (pid reuse).
"""
from __future__ import annotations

import os

from omnitrace.events import KERNEL_REAP, KERNEL_REAPER
from omnitrace.model.gpu import GpuUsage
from omnitrace.model.http import request_from_span
from omnitrace.model.marks import mark_from_span
from omnitrace.model.model import Model
from omnitrace.model.process import ParentChange, Process, SignalReceipt, container_id
from omnitrace.timeline import Timeline


class _Builder:
    def __init__(self, timeline: Timeline):
        self.model = Model(timeline)
        self.current: dict[int, Process] = {}   # pid -> latest incarnation
        self.gpu = GpuUsage()
        self.model.gpu = self.gpu
        self.t0 = timeline.t0
        named = timeline.header.get("container") or {}
        self.container_name = named.get("name")
        self.container_id = named.get("id")
        # the recorded container's group, whatever its runtime calls it
        self.container_group = timeline.header.get("cgroup") if self.container_name else None

    # --- process table --------------------------------------------------------------------------
    def _new(self, pid: int, start: int | None, ref: int | None) -> Process:
        proc = Process(pid=pid, start=start, start_ref=ref)
        self.current[pid] = proc
        self.model.processes.append(proc)
        return proc

    def _get(self, pid: int) -> Process:
        """The incarnation events about pid refer to; one that predates the recording if unseen."""
        proc = self.current.get(pid)
        if proc is None:
            proc = self._new(pid, None, None)
        return proc

    def fork(self, i, e):
        if e.thread:
            return
        old = self.current.get(e.pid)
        if old is not None and old.exit_t is None and old.start is not None:
            return  # a duplicate fork record: keep the first
        proc = self._new(e.pid, e.t, i)
        proc.ns_pid = e.ns_pid
        parent = self.current.get(e.ppid)
        if parent is not None:  # a child starts in its parent's cgroup
            proc.cgroup, proc.container = parent.cgroup, parent.container
        proc.parents.append(ParentChange(e.t, e.ppid, i))
        if e.comm:
            proc.names.append((e.t, e.comm))

    def exec_(self, i, e):
        proc = self._get(e.pid)
        proc.execs.append((e.t, e.filename, i))
        proc.names.append((e.t, os.path.basename(e.filename)[:15]))

    def rename(self, i, e):
        if e.tid == e.pid:  # setproctitle renames the main thread; worker threads' names are noise
            _add_name(self._get(e.pid), e.t, e.newcomm)

    def exit(self, i, e):
        if not e.group_dead:
            return
        proc = self._get(e.pid)
        if proc.exit_t is not None:
            return
        proc.exit_t, proc.exit_ref = e.t, i
        # Its live children are now orphans: the kernel re-parents them at this moment, to the
        # nearest subreaper or init. Who exactly is filled in later from snapshots and reaps.
        for child in list(self.model.children_of.get(e.pid, {}).values()):
            if child.exit_t is None and child.parents and child.parents[-1].ppid == e.pid:
                child.parents.append(ParentChange(e.t, None, i, inferred=True))

    def exit_group(self, i, e):
        proc = self._get(e.pid)
        proc.exit_group_code, proc.exit_group_ref = e.code, i

    def reap(self, i, e):
        proc = self.current.get(e.pid)
        if proc is None:
            return
        by_kernel = e.syscall == KERNEL_REAP
        if proc.reap_t is not None:
            # The kernel's release can reach the ring buffer before the wait call that reaped
            # (the free runs a grace period after the reap, the wait tracepoint at the call's
            # return): the wait call's reaper and status are the better evidence.
            if by_kernel or proc.reaped_by != KERNEL_REAPER:
                return
        reap_t = e.t if proc.reap_t is None else min(proc.reap_t, e.t)
        proc.reap_t, proc.reap_ref, proc.reaped_by = reap_t, i, e.reaper
        proc.reap_code, proc.reap_signal = e.exit_code, e.signal
        if not by_kernel and proc.parents and proc.parents[-1].ppid is None:
            proc.parents[-1].ppid = e.reaper  # the reaper is the parent it was handed to

    def signal_generate(self, i, e):
        self._get(e.target_pid).signals.append(SignalReceipt(
            e.t, e.signal, e.sender_pid, e.sender_comm, e.result, i))

    def signal_deliver(self, i, e):
        proc = self._get(e.pid)
        for receipt in proc.signals:
            if receipt.signal == e.signal and receipt.delivered_t is None:
                receipt.delivered_t, receipt.disposition, receipt.deliver_ref = e.t, e.disposition, i
                return
        # Delivered without a generate we saw (sent before the recording, or lost): keep it.
        proc.signals.append(SignalReceipt(e.t, e.signal, 0, "", "delivered", i, e.t, e.disposition, i))

    def proc(self, i, e):
        proc = self.current.get(e.pid)
        if proc is None or _reused(proc, e):
            # one already running at attach (--attach, --cgroup) predates the recording
            started = e.create_time if e.create_time is None or e.create_time >= self.t0 else None
            proc = self._new(e.pid, started, None)
        elif proc.exit_t is not None and e.state != "zombie":
            # Read before the exit and written after its record (a busy machine): the same
            # process, already dead. It names it, but never revives it nor moves it.
            _describe(proc, e)
            self._place(proc, e)
            return
        if e.name:
            _add_name(proc, e.t, e.name)
        if e.cmdline:
            proc.cmdline = list(e.cmdline)
        self._place(proc, e)
        proc.ports.update(e.ports)
        proc.state = e.state
        if e.state == "zombie" and proc.zombie_seen_t is None:
            proc.zombie_seen_t = e.t
        last = proc.parents[-1] if proc.parents else None
        if last is None:
            proc.parents.append(ParentChange(e.t, e.ppid, i))
        elif last.ppid is None:
            # Confirms an inferred re-parenting, unless the snapshot was taken in the instant
            # between the old parent's exit record and the kernel handing the child over.
            before = proc.parents[-2].ppid if len(proc.parents) > 1 else None
            if e.ppid != before:
                last.ppid = e.ppid
        elif last.ppid != e.ppid:
            proc.parents.append(ParentChange(e.t, e.ppid, i))  # seen by procfs only
        self.model.index_child(proc)

    def _place(self, proc: Process, e) -> None:
        """Its namespace pid and cgroup, and so its container, from a snapshot."""
        if e.ns_pid is not None:
            proc.ns_pid = e.ns_pid
        if e.cgroup:
            proc.cgroup = e.cgroup
            proc.container = self._container_of(e.cgroup)

    def _container_of(self, cgroup: str) -> str | None:
        group = self.container_group
        if group and (cgroup == group or cgroup.startswith(group.rstrip("/") + "/")):
            return self.container_name
        cid = container_id(cgroup)
        if cid is None:
            return None
        return self.container_name if cid == self.container_id else cid[:12]

    def gpu_memory(self, i, e):
        self.gpu.device_sample(e.device, e.t, e.used, e.total, i)

    def gpu_process(self, i, e):
        self.gpu.process_sample(e.device, e.pid, e.t, e.used, i)

    def lost(self, i, e):
        self.model.lost.append((e.t, e.end, e.source, e.count, i))

    def span(self, i, e):
        mark = mark_from_span(e, i)
        if mark is not None:
            self.model.marks.append(mark)
            return
        request = request_from_span(e, i)
        if request is not None:
            self.model.requests.append(request)


TICK_NS = 10_000_000  # procfs start times count clock ticks: USER_HZ is 100 on Linux


def _reused(proc: Process, e) -> bool:
    """Whether a snapshot shows a new process under the pid of one whose exit was recorded.

    Identity is the kernel's fork and exit records plus procfs's start time (clock ticks): only a
    start after the recorded one (beyond a tick's rounding) and no earlier than the recorded
    exit is a reused pid. Anything else, a snapshot without a start included, is the same."""
    ended = proc.exit_t if proc.exit_t is not None else proc.reap_t
    if ended is None or e.create_time is None:
        return False
    after_start = proc.start is None or e.create_time > proc.start + TICK_NS
    return after_start and e.create_time >= ended - TICK_NS


def _describe(proc: Process, e) -> None:
    if e.name:
        _add_name(proc, e.t, e.name)
    if e.cmdline and not proc.cmdline:
        proc.cmdline = list(e.cmdline)


COMM_LEN = 15  # the kernel keeps 15 characters of a name (comm); procfs may show the full title


def _add_name(proc: Process, t: int, name: str) -> None:
    """A new title, unless it is the current one or its comm-length cut (a zombie's snapshot, a
    rename event): those would hide the full title an engineer recognises."""
    current = proc.names[-1][1] if proc.names else ""
    if name == current or (len(name) == COMM_LEN and current.startswith(name)):
        return
    proc.names.append((t, name))


def build_model(timeline: Timeline) -> Model:
    """The model of one recording. Takes the Timeline object, never a path or a live recorder."""
    builder = _Builder(timeline)
    handlers = {
        "fork": builder.fork, "exec": builder.exec_, "rename": builder.rename, "exit": builder.exit,
        "exit_group": builder.exit_group, "reap": builder.reap,
        "signal_generate": builder.signal_generate, "signal_deliver": builder.signal_deliver,
        "proc": builder.proc, "gpu_memory": builder.gpu_memory, "gpu_process": builder.gpu_process,
        "lost": builder.lost, "span": builder.span,
    }
    model = builder.model
    index_child = model.index_child
    for i, event in enumerate(timeline.events):
        handler = handlers.get(event.kind)
        if handler is not None:
            handler(i, event)
            if event.kind == "fork" and not event.thread:
                index_child(builder.current[event.pid])
    # Orphans nobody reaped and procfs never saw: the kernel hands them to init unless a subreaper
    # claimed them; say init, and mark it inferred, rather than leave the parent unknown.
    for proc in model.processes:
        for change in proc.parents:
            if change.ppid is None:
                change.ppid = 1
    model.finish()
    return model
