"""The recorder: runs a command (or attaches to a tree) with every source on, into one timeline.

Order matters for a faithful record: the command is forked but held before exec until its pid is
in the kernel's traced set and every source runs, so nothing it does is missed.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from omnitrace import events as ev
from omnitrace.errors import OmnitraceError
from omnitrace.record.cgroup import Container, Group, member_pids
from omnitrace.record.kernel import KernelSource
from omnitrace.procstat import is_running, read_stat
from omnitrace.record.procfs import ProcfsSource
from omnitrace.record.source import RecordContext, Source, SourceUnavailable
from omnitrace.timeline import TimelineWriter, make_header


@dataclass
class RecordOptions:
    output: Path
    command: list[str] = field(default_factory=list)
    attach: list[int] = field(default_factory=list)
    trace_all: bool = False
    cgroup: Group | None = None          # --cgroup / --container: every process in this group
    container: Container | None = None   # --container: the container the group is
    follow_containers: bool = False      # --follow-containers: also every container made meanwhile
    no_bpf: bool = False
    snapshot_interval_s: float = 1.0
    linger_s: float = 1.0
    keep_root: bool = False
    extra_sources: list[Source] = field(default_factory=list)
    observers: list[Callable[[ev.Event], None]] = field(default_factory=list)
    quiet: bool = False
    header: dict = field(default_factory=dict)   # more header fields (e.g. health_rate_hz)
    env: dict[str, str] = field(default_factory=dict)  # more environment for the command


@dataclass
class RecordResult:
    exit_status: int | None
    events: int
    processes: int
    lost: int
    output: Path
    ended_by: str

    def summary(self) -> str:
        status = "" if self.exit_status is None else f", exit status {self.exit_status}"
        return (f"omnitrace: recorded {self.events} events, {self.processes} processes, "
                f"{self.lost} lost{status} -> {self.output}")


class _FinishNow(Exception):
    """A second SIGINT/SIGTERM: stop waiting for the command and finish the file."""


class Recorder:
    def __init__(self, options: RecordOptions):
        if not (options.command or options.attach or options.trace_all or options.cgroup):
            raise OmnitraceError("nothing to record: give a command after --, --attach PID, "
                                 "--cgroup PATH, --container NAME or --all")
        if options.cgroup and options.no_bpf:
            raise OmnitraceError(f"{_group_option(options)}: needs the kernel source, and "
                                 f"--no-bpf turns it off (procfs polling cannot filter by cgroup)")
        if options.follow_containers and options.no_bpf:
            raise OmnitraceError("--follow-containers: needs the kernel source, and --no-bpf "
                                 "turns it off (only the kernel sees a container's cgroup made)")
        self.options = options
        self.ctx = RecordContext(emit=self._emit)
        self.kernel: KernelSource | None = None
        self.procfs: ProcfsSource | None = None
        self.sources: list[Source] = []
        self._writer: TimelineWriter | None = None
        self._early: list[ev.Event] = []
        self._signals_seen = 0
        self._child: subprocess.Popen | None = None
        self._group_had_members = False

    # -- events -----------------------------------------------------------------------------
    def _emit(self, event: ev.Event) -> None:
        if self._writer is None:
            self._early.append(event)
        else:
            self._writer.append(event)
        for observer in self.options.observers:
            observer(event)

    # -- sources ----------------------------------------------------------------------------
    def _prepare_sources(self) -> dict[str, str]:
        env: dict[str, str] = {}
        fallback_reason = "--no-bpf given" if self.options.no_bpf else None
        if not self.options.no_bpf:
            kernel = KernelSource(trace_all=self.options.trace_all, group=self.options.cgroup,
                                  follow_containers=self.options.follow_containers)
            try:
                env.update(kernel.prepare(self.ctx))
                self.kernel = kernel
                self.sources.append(kernel)
            except SourceUnavailable as exc:
                fallback_reason = str(exc)
        if fallback_reason and self.options.cgroup:
            raise OmnitraceError(f"{_group_option(self.options)}: needs the kernel source, which "
                                 f"cannot run: {fallback_reason}")
        if fallback_reason and self.options.follow_containers:
            raise OmnitraceError(f"--follow-containers: needs the kernel source, which cannot "
                                 f"run: {fallback_reason}")
        if fallback_reason:
            self._say(f"omnitrace: BPF unavailable ({fallback_reason}); falling back to procfs "
                      f"polling: fork/exit every 20 ms, no signals or exit statuses")
        self.procfs = ProcfsSource(interval_s=self.options.snapshot_interval_s,
                                   lifecycle=self.kernel is None)
        self.sources.append(self.procfs)
        env.update(self.procfs.prepare(self.ctx))
        for source in self.options.extra_sources:
            try:
                env.update(source.prepare(self.ctx))
                self.sources.append(source)
            except SourceUnavailable as exc:
                self._say(f"omnitrace: {source.name} source off: {exc}")
        return env

    def _say(self, line: str) -> None:
        if not self.options.quiet:
            print(line, file=sys.stderr, flush=True)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> RecordResult:
        env = {**self._prepare_sources(), **self.options.env}
        header = make_header(self.options.command, {s.name: s.describe() for s in self.sources},
                             recorder_pid=os.getpid(), attach=self.options.attach,
                             trace_all=self.options.trace_all, **self._group_header(),
                             **self.options.header)
        self._writer = TimelineWriter(self.options.output, header)
        _give_to_invoking_user(self.options.output)
        self._writer.extend(self._early)
        self._early.clear()
        ended_by = "command_exit"
        exit_status = None
        previous = self._install_signal_handlers()
        try:
            for pid in self.options.attach:
                self._follow_existing(pid)
            for source in self.sources:
                source.start(self.ctx)
            if self.options.command:
                self._spawn(env)
            exit_status = self._wait()
            self._linger()
        except _FinishNow:
            ended_by = "signal"
        finally:
            _restore_signal_handlers(previous)
            counters = self._stop_sources()
        footer = {"t": time.monotonic_ns(), "exit_status": exit_status, "ended_by": ended_by,
                  "counters": counters}
        events = self._writer.events_written
        self._writer.close(footer)
        return RecordResult(exit_status=exit_status, events=events,
                            processes=len(self.ctx.traced_pids()),
                            lost=sum(c.get("lost", 0) for c in counters.values()),
                            output=self.options.output, ended_by=ended_by)

    def _group_header(self) -> dict:
        """The recorded cgroup, its members at attach (followed from now on: the kernel filter is
        live), and the container it is."""
        if self.options.cgroup is None:
            return {}
        pids = self.kernel.add_members()
        for pid in pids:
            self.ctx.add_traced(pid)
        fields = {"cgroup": self.options.cgroup.relative, "cgroup_pids": pids}
        container = self.options.container
        if container is not None:
            fields["container"] = {"name": container.name, "id": container.id,
                                   "runtime": container.runtime, "pid": container.pid}
        return fields

    def _follow_existing(self, pid: int) -> None:
        if not psutil.pid_exists(pid):
            raise OmnitraceError(f"--attach {pid}: no such process")
        if self.kernel:
            pids = self.kernel.add_tree(pid)
        else:
            pids = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
            for p in pids:
                self.procfs.adopt_root(p)
        for p in pids:
            self.ctx.add_traced(p)

    def _spawn(self, env: dict[str, str]) -> None:
        """Run the command, held before exec until its pid is traced.

        Popen returns only after exec, so the child announces its pid on one pipe and waits on
        another; a gate thread here adds the pid to the traced set, then lets it go."""
        pid_read, pid_write = os.pipe()
        gate_read, gate_write = os.pipe()

        def hold_until_traced() -> None:
            os.write(pid_write, str(os.getpid()).encode())
            os.close(pid_write)
            os.read(gate_read, 1)
            os.close(gate_read)

        def gate() -> None:
            data = os.read(pid_read, 32)
            if data:
                self._adopt_root(int(data))
            os.write(gate_write, b"x")

        gatekeeper = threading.Thread(target=gate, name="spawn-gate", daemon=True)
        gatekeeper.start()
        try:
            self._child = subprocess.Popen(
                self.options.command, env={**os.environ, **env}, preexec_fn=hold_until_traced,
                pass_fds=(pid_write, gate_read), process_group=0, **self._privilege_drop())
        except (OSError, subprocess.SubprocessError) as exc:
            raise OmnitraceError(f"cannot run {self.options.command[0]!r}: {exc}") from None
        finally:
            os.close(pid_write)  # the gate thread sees EOF if the child never started
            gatekeeper.join()
            for fd in (pid_read, gate_read, gate_write):
                os.close(fd)

    def _adopt_root(self, pid: int) -> None:
        self._emit(ev.Fork(t=time.monotonic_ns(), pid=pid, tid=pid, ppid=os.getpid(),
                           comm=os.path.basename(self.options.command[0])[:15]))
        if self.kernel:
            self.kernel.add_process(pid)
        else:
            self.procfs.adopt_root(pid)
        self.ctx.add_traced(pid)
        self.ctx.root_pid = pid
        self.ctx.process_changed(pid, "start")

    def _privilege_drop(self) -> dict:
        """Under sudo, the command runs as the invoking user with the environment kept."""
        uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
        if self.options.keep_root or os.geteuid() != 0 or not uid or uid == "0":
            return {}
        uid_n, gid_n = int(uid), int(gid or uid)
        try:
            name = pwd.getpwuid(uid_n).pw_name
            groups = os.getgrouplist(name, gid_n)
        except KeyError:
            groups = [gid_n]
        return {"user": uid_n, "group": gid_n, "extra_groups": groups}

    def _wait(self) -> int | None:
        if self._child is None:
            # --attach, --cgroup or --all without a command: until the attached trees end, the
            # group empties (the container stopped), or a signal.
            while any(_alive(p) for p in self.options.attach) or self._group_lives() or (
                    self.options.trace_all and not self.options.attach):
                time.sleep(0.1)
            return None
        status = self._child.wait()
        return 128 - status if status < 0 else status

    def _group_lives(self) -> bool:
        """Whether the recorded group may still have something to show: it has members, or it
        never had any yet (recording waits for the first)."""
        group = self.options.cgroup
        if group is None or self.options.attach:
            return False
        if member_pids(group):
            self._group_had_members = True
            return True
        return not self._group_had_members and group.path.is_dir()

    def _linger(self) -> None:
        """Give descendants that outlive the command a moment to exit, so a normal teardown
        is recorded whole; whatever still runs after that is residue, and stays recorded as
        alive."""
        deadline = time.monotonic() + self.options.linger_s
        while time.monotonic() < deadline:
            if not any(_alive(p) for p in self.ctx.traced_pids()):
                break
            time.sleep(0.02)
        time.sleep(0.05)  # the last exits' records are still in the ring buffer

    def _stop_sources(self) -> dict[str, dict[str, int]]:
        counters = {}
        for source in reversed(self.sources):
            try:
                source.stop()
            finally:
                counters[source.name] = source.counters()
        return counters

    # -- signals ----------------------------------------------------------------------------
    def _install_signal_handlers(self):
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum, _frame) -> None:
        self._signals_seen += 1
        child = self._child
        if self._signals_seen == 1 and child is not None and child.returncode is None:
            self._say(f"omnitrace: forwarding {signal.Signals(signum).name} to pid {child.pid}; "
                      f"send it again to stop recording now")
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass
            return
        raise _FinishNow()


def _group_option(options: RecordOptions) -> str:
    if options.container is not None:
        return f"--container {options.container.name}"
    return f"--cgroup {options.cgroup.path}"


def _restore_signal_handlers(previous) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and is_running(stat[1])


def _give_to_invoking_user(path: Path) -> None:
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid:
        try:
            os.chown(path, int(uid), int(gid or uid))
        except OSError:
            pass
