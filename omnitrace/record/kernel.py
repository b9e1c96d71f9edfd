"""The kernel source: bcc loads bpf/omnitrace.bpf.c, one BPF ring buffer carries its records,
and a poller thread turns them into timeline events.

The traced set lives in the BPF map `traced` (tgids); the recorder seeds it with the command's pid
before the command is allowed to exec (or with a cgroup's members, `--cgroup`), and the kernel grows
it at fork and, with a cgroup, whenever a task under that cgroup runs a traced tracepoint. User
space mirrors it into RecordContext so the other sources know which pids matter.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from omnitrace import events as ev
from omnitrace.procstat import own_pid_ns, pid_ns_view
from omnitrace.record import cgroup as cg
from omnitrace.record import kernel_abi as abi
from omnitrace.record.source import RecordContext, Source, SourceUnavailable

BPF_DIR = Path(os.environ.get("OMNITRACE_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))
PROGRAM = "omnitrace.bpf.c"
DEFAULT_RINGBUF_PAGES = 1024  # 4 MiB: about 18,000 records of slack between polls
POLL_TIMEOUT_MS = 50
BATCH_PAUSE_S = 0.005
LOST_DRAIN_INTERVAL_S = 0.1
TRACEPOINTS = [
    "sched:sched_process_fork", "sched:sched_process_exec", "sched:sched_process_exit",
    "syscalls:sys_enter_exit_group", "syscalls:sys_enter_clone", "syscalls:sys_enter_clone3",
    "syscalls:sys_enter_fork", "syscalls:sys_enter_vfork",
    "syscalls:sys_enter_wait4", "syscalls:sys_exit_wait4", "syscalls:sys_enter_waitid",
    "syscalls:sys_exit_waitid", "signal:signal_generate", "signal:signal_deliver",
    "task:task_rename", "oom:mark_victim", "sched:sched_process_free", "cgroup:cgroup_mkdir",
]
TRACEFS = Path("/sys/kernel/tracing")


def unavailable_reason() -> str | None:
    """Why the BPF recorder cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root (BPF needs root or CAP_BPF+CAP_PERFMON): run under sudo"
    if not (TRACEFS / "events").is_dir():
        return f"tracefs is not mounted at {TRACEFS}: mount -t tracefs nodev {TRACEFS}"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable: apt-get install python3-bpfcc (then make setup)"
    if not (BPF_DIR / PROGRAM).is_file():
        return f"BPF program {BPF_DIR / PROGRAM} is missing"
    return None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class KernelSource(Source):
    name = "kernel"

    def __init__(self, trace_all: bool = False, ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
                 group: cg.Group | None = None, follow_containers: bool = False):
        self.trace_all = trace_all
        self.group = group
        self.follow_containers = follow_containers
        self._containers: list[str] = []  # cgroups of the containers followed, as made
        self._unresolved_reaps = 0
        self.ringbuf_pages = ringbuf_pages
        self._bpf = None
        self._ctx: RecordContext | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._events = 0
        self._lost = 0
        self._last_drain_ts = 0
        self._fatal_pending: dict[int, list[int]] = {}  # pid -> fatal-capable signals sent, undelivered

    # -- life cycle -------------------------------------------------------------------------
    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        reason = unavailable_reason()
        if reason:
            raise SourceUnavailable(reason)
        from bcc import BPF
        self._ctx = ctx
        text = (BPF_DIR / PROGRAM).read_bytes()
        try:
            self._bpf = BPF(text=text, cflags=[f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={self.ringbuf_pages}",
                                                "-Wno-macro-redefined"])
        except Exception as exc:  # bcc raises bare Exception on compile/attach failures
            raise SourceUnavailable(f"bcc could not load {PROGRAM}: {exc}") from None
        self._configure()
        self._bpf[b"events"].open_ring_buffer(self._on_record)
        ctx.trace_all = self.trace_all
        self._last_drain_ts = time.monotonic_ns()
        return {}

    def _configure(self) -> None:
        if self.group is not None:
            try:
                self._bpf[b"cgroup_filter"][0] = str(self.group.path)  # bcc opens it for its fd
            except Exception as exc:  # bcc raises bare Exception when the map update fails
                raise SourceUnavailable(f"cannot filter on cgroup {self.group.path}: {exc}") \
                    from None
        dev, ino = own_pid_ns() or (0, 0)
        self._bpf[b"config"][ctypes.c_int(0)] = abi.RawConfig(
            trace_all=int(self.trace_all), cgroup=int(self.group is not None),
            host_ns_dev=dev, host_ns_ino=ino, follow_containers=int(self.follow_containers))

    def start(self, ctx: RecordContext) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name="kernel-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()
            self._drain_lost()
            self._bpf.cleanup()
            self._bpf = None

    def describe(self) -> dict[str, Any]:
        info = {"backend": "bcc", "precision_ns": 1, "clock": "bpf_ktime_get_ns",
                "tracepoints": TRACEPOINTS, "trace_all": self.trace_all,
                "ringbuf_bytes": self.ringbuf_pages * 4096}
        if self.group is not None:
            info["cgroup"] = self.group.relative
        info["follow_containers"] = self.follow_containers
        return info

    def counters(self) -> dict[str, int]:
        counts = {"events": self._events, "lost": self._lost}
        if self._unresolved_reaps:  # reaps inside a pid namespace of a child never met
            counts["unresolved_reaps"] = self._unresolved_reaps
        if self.follow_containers:
            counts["containers_followed"] = len(self._containers)
        return counts

    # -- the traced set ---------------------------------------------------------------------
    def add_process(self, pid: int) -> None:
        self._bpf[b"traced"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        self._ctx.add_traced(pid)

    def add_tree(self, root: int) -> list[int]:
        """Follow an existing process, its descendants and their threads (for --attach)."""
        try:
            procs = [psutil.Process(root)]
            procs += procs[0].children(recursive=True)
        except psutil.Error as exc:
            raise SourceUnavailable(f"cannot attach to pid {root}: {exc}") from None
        return self._follow(procs)

    def add_members(self) -> list[int]:
        """Follow the processes already in the cgroup (and its subgroups), with their threads:
        the kernel filter catches them only once they run a traced tracepoint, and a signal sent
        to one before that would be missed."""
        procs = []
        for pid in cg.member_pids(self.group):
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass  # ended since the walk
        return self._follow(procs)

    def _follow(self, procs: list[psutil.Process]) -> list[int]:
        added = []
        owners = self._bpf[b"thread_owner"]
        for proc in procs:
            self.add_process(proc.pid)
            self._note_namespace(proc.pid)
            added.append(proc.pid)
            try:
                for thread in proc.threads():
                    if thread.id != proc.pid:
                        owners[ctypes.c_uint32(thread.id)] = ctypes.c_uint32(proc.pid)
            except psutil.Error:
                pass
        return added

    def _fork_ns_pid(self, raw: abi.RawEvent) -> int | None:
        """The child's pid in its namespace: what clone returned to a parent inside one (the
        child may be gone already), else procfs's view (a namespace's init, forked from outside
        it, is 1 there)."""
        if not raw.code:
            return self._note_namespace(raw.pid)
        view = pid_ns_view(raw.other_pid) or pid_ns_view(raw.pid)
        if view is not None:
            self._ctx.note_ns_pid(raw.pid, view[0], raw.code)
        return raw.code

    def _note_namespace(self, pid: int) -> int | None:
        """Its pid in its own pid namespace when that is not ours (None otherwise), remembered for
        translating a reap inside that namespace."""
        view = pid_ns_view(pid)
        if view is None:
            return None
        self._ctx.note_ns_pid(pid, *view)
        return view[1]

    # -- polling ----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        next_drain = 0.0
        while not self._stop.is_set():
            self._bpf.ring_buffer_poll(POLL_TIMEOUT_MS)
            now = time.monotonic()
            if now >= next_drain:
                self._drain_lost()
                next_drain = now + LOST_DRAIN_INTERVAL_S
            # The ring buffer wakes us for every record: pausing lets a burst gather into one
            # batch (the buffer holds seconds of a storm), for a few ms of added latency.
            time.sleep(BATCH_PAUSE_S)

    def _drain_lost(self) -> None:
        per_cpu = self._bpf[b"lost"][ctypes.c_int(0)]
        total = sum(v.count for v in per_cpu)
        if total <= self._lost:
            return
        last = max(v.last_ts for v in per_cpu)
        firsts = [v.first_ts for v in per_cpu if v.first_ts]
        # The losses happened after the previous drain (and not before the first ever loss).
        start = max(self._last_drain_ts, min(firsts) if firsts else 0)
        self._ctx.emit(ev.Lost(t=start, source="kernel", count=total - self._lost, end=last))
        self._lost = total
        self._last_drain_ts = last

    def _on_record(self, _ctx, data, _size) -> int:
        raw = ctypes.cast(data, ctypes.POINTER(abi.RawEvent)).contents
        if self.group is not None or self.follow_containers:
            self._meet_members(raw)
        event = self._decode(raw)
        if event is not None:
            self._events += 1
            self._ctx.emit(event)
        return 0

    def _meet_members(self, raw: abi.RawEvent) -> None:
        """A cgroup member the kernel met before user space did (the runtime moved it in, or it
        was forked by one): announce it, so procfs snapshots it."""
        if raw.kind in _ACTOR_IS_PID:
            pid = raw.other_pid if raw.kind == abi.OT_FORK else raw.pid
            if pid and not self._ctx.is_traced(pid):
                self._ctx.add_traced(pid)
                self._note_namespace(pid)
                self._ctx.process_changed(pid, "joined")

    def _decode(self, raw: abi.RawEvent) -> ev.Event | None:
        kind, t, ctx = raw.kind, raw.ts, self._ctx
        if kind == abi.OT_FORK:
            thread = bool(raw.flags & abi.OT_F_THREAD)
            ns_pid = None
            if not thread:
                ctx.add_traced(raw.pid)
                ns_pid = self._fork_ns_pid(raw)
                ctx.process_changed(raw.pid, "new")
            return ev.Fork(t=t, pid=raw.pid, tid=raw.tid, ppid=raw.other_pid, comm=_text(raw.comm2),
                           thread=thread, ns_pid=ns_pid)
        if kind == abi.OT_EXEC:
            ctx.process_changed(raw.pid, "exec")
            return ev.Exec(t=t, pid=raw.pid, filename=_text(raw.filename), old_pid=raw.other_pid)
        if kind == abi.OT_EXIT:
            return ev.Exit(t=t, pid=raw.pid, tid=raw.tid, comm=_text(raw.comm),
                           group_dead=bool(raw.flags & abi.OT_F_GROUP_DEAD))
        if kind == abi.OT_EXIT_GROUP:
            return ev.ExitGroup(t=t, pid=raw.pid, tid=raw.tid, code=raw.code & 0xFF)
        if kind == abi.OT_REAP:
            return self._decode_reap(raw)
        if kind == abi.OT_SIGNAL_GEN:
            return self._decode_signal_generate(raw)
        if kind == abi.OT_SIGNAL_DLV:
            return self._decode_signal_deliver(raw)
        if kind == abi.OT_RENAME:
            ctx.process_changed(raw.pid, "rename")
            return ev.Rename(t=t, pid=raw.pid, tid=raw.tid, oldcomm=_text(raw.comm),
                             newcomm=_text(raw.comm2))
        if kind == abi.OT_OOM_KILL:
            return ev.OomKill(t=t, pid=raw.pid, comm=_text(raw.comm))
        if kind == abi.OT_CONTAINER:
            self._containers.append(_text(raw.filename))
            return None
        if kind == abi.OT_RELEASE:
            ctx.forget_ns_pid(raw.pid)
            return ev.Reap(t=t, reaper=ev.KERNEL_REAPER, pid=raw.pid, syscall=ev.KERNEL_REAP)
        return None

    def _decode_reap(self, raw: abi.RawEvent) -> ev.Reap | None:
        pid = raw.pid
        if raw.flags & abi.OT_F_NS_PID:
            pid = self._host_pid_of_reaped(raw.other_pid, raw.pid)
            if pid is None:
                self._unresolved_reaps += 1  # counted, never written under a wrong pid
                return None
        else:
            self._ctx.forget_ns_pid(pid)
        known = bool(raw.flags & abi.OT_F_STATUS_KNOWN)
        status = raw.code & 0xFFFF if known else None
        exit_code = signal = None
        core = False
        if status is not None:
            exit_code, signal, core = ev.decode_wait_status(status)
        return ev.Reap(t=raw.ts, reaper=raw.other_pid, pid=pid, status=status,
                       exit_code=exit_code, signal=signal, core_dumped=core,
                       syscall="waitid" if raw.flags & abi.OT_F_WAITID else "wait4")

    def _host_pid_of_reaped(self, reaper: int, ns_pid: int) -> int | None:
        """The host pid of a child a reaper inside a pid namespace collected by its namespace pid
        and whose clone the kernel did not see (an orphan handed to a container's init): the
        process we met with that pid in the reaper's namespace. It stays in the BPF traced set
        otherwise, where a reused pid would be followed by mistake."""
        # the reaper (a container's init) may have exited by the time this record is read: its
        # namespace as met at its fork then
        view = pid_ns_view(reaper)
        inode = view[0] if view else self._ctx.ns_of(reaper)
        host = self._ctx.take_host_pid(inode, ns_pid) if inode is not None else None
        if host is not None:
            try:
                del self._bpf[b"traced"][ctypes.c_uint32(host)]
            except KeyError:
                pass
        return host

    def _decode_signal_deliver(self, raw: abi.RawEvent) -> ev.SignalDeliver:
        disposition = ev.disposition_name(raw.handler)
        signal, delivered_as = raw.sig, None
        if disposition == "default" and raw.sig in ev.FATAL_BY_DEFAULT:
            self._ctx.fatal_signal(raw.ts, raw.pid)
            # The kernel turns a fatal default-action signal into a group SIGKILL: name the
            # signal that was sent, which is what the process dies of.
            pending = self._fatal_pending.get(raw.pid, [])
            if raw.sig == 9 and pending and 9 not in pending:
                signal, delivered_as = pending[0], 9
            self._fatal_pending.pop(raw.pid, None)
        elif raw.sig in self._fatal_pending.get(raw.pid, ()):
            self._fatal_pending[raw.pid].remove(raw.sig)
        return ev.SignalDeliver(t=raw.ts, pid=raw.pid, tid=raw.tid, signal=signal, code=raw.code,
                                disposition=disposition, delivered_as=delivered_as)

    def _decode_signal_generate(self, raw: abi.RawEvent) -> ev.SignalGenerate:
        target = raw.pid or _tgid_of(raw.tid)
        if raw.result == 0 and raw.sig in ev.FATAL_BY_DEFAULT:
            self._fatal_pending.setdefault(target, []).append(raw.sig)
        if target and raw.sig in (2, 9, 15) and self._ctx.is_traced(target):
            self._ctx.fatal_signal(raw.ts, target)
        return ev.SignalGenerate(
            t=raw.ts, sender_pid=raw.other_pid, sender_tid=raw.other_tid,
            sender_comm=_text(raw.comm2), target_pid=target, target_tid=raw.tid,
            target_comm=_text(raw.comm), signal=raw.sig, code=raw.code,
            group=bool(raw.flags & abi.OT_F_GROUP),
            result=ev.SIGNAL_RESULTS.get(raw.result, str(raw.result)))


# Records whose pid (other_pid for a fork: the parent) is the task that ran the tracepoint.
_ACTOR_IS_PID = frozenset({abi.OT_FORK, abi.OT_EXEC, abi.OT_EXIT, abi.OT_EXIT_GROUP,
                           abi.OT_SIGNAL_DLV, abi.OT_RENAME})


def _tgid_of(tid: int) -> int:
    """Best effort for a signal to a thread outside the traced set (it may be gone already)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid

