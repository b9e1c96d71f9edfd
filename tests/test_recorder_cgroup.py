"""`record --cgroup` for real: processes in a real cgroup v2 group (and a subgroup), a process
outside it, one in a new pid namespace (unshare), against the kernel filter. No container runtime:
a runtime does the same two things (a cgroup, a pid namespace) that these tests do by hand.

Every wait is for an event (an answer on a pipe, a line in the timeline), never for time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnitrace import events as ev
from omnitrace.record.cgroup import (CgroupError, cgroup2_mount, member_pids, resolve_container,
                                     resolve_group)
from omnitrace.model import build_model
from omnitrace.timeline import read_timeline
from tests.recording import OMNITRACE, QUIET_SOURCES, REPO, WORKLOADS

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or cgroup2_mount() is None,
                                reason="needs root and a cgroup v2 hierarchy")
MEMBER = str(WORKLOADS / "cgroup_member.py")
EVENT_WAIT_S = 120  # a bound for a hung run on a busy machine, not a pace


@pytest.fixture
def group():
    path = cgroup2_mount() / f"omnitrace-test-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    (path / "sub").mkdir()
    yield path
    for _ in range(50):  # members killed below are gone once the kernel has reaped them
        for pid in member_pids(resolve_group(str(path))):
            _kill(pid)
        try:
            (path / "sub").rmdir()
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


class Member:
    """tests/workloads/cgroup_member.py, started inside `group` (in a new pid namespace with
    ns=True: unshare forks it as the namespace's init)."""

    def __init__(self, group: Path | None, ns: bool = False):
        command = [sys.executable, MEMBER]
        if ns:
            command = ["unshare", "--pid", "--fork", "--mount-proc", *command]
        enter = (lambda: _join(group)) if group is not None else None
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, preexec_fn=enter)

    def ask(self, command: str) -> int:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"member {self.proc.pid} ended before answering {command!r}"
        return int(answer)

    def exit(self) -> None:
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        assert self.proc.wait(timeout=EVENT_WAIT_S) == 0


def _join(group: Path) -> None:
    with open(group / "cgroup.procs", "w") as f:
        f.write(str(os.getpid()))


def start_recorder(path: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(OMNITRACE + ["record", "-o", str(path), *QUIET_SOURCES, *flags],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)


def wait_for_line(path: Path, recorder: subprocess.Popen, wanted) -> dict:
    """The first line of the timeline (as written so far) for which wanted(obj) holds."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while time.monotonic() < deadline:
        assert recorder.poll() is None, f"recorder ended: {recorder.stderr.read()}"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # the line being written
                if wanted(obj):
                    return obj
        time.sleep(0.05)
    raise AssertionError(f"no matching line in {path} after {EVENT_WAIT_S} s")


def finish(recorder: subprocess.Popen, *members: Member) -> None:
    """The members exit, the group is empty: the recorder ends on its own."""
    for member in members:
        member.exit()
    assert recorder.wait(timeout=EVENT_WAIT_S) == 0, recorder.stderr.read()


def of(timeline, cls, **match):
    return [e for e in timeline.events if isinstance(e, cls)
            and all(getattr(e, k) == v for k, v in match.items())]


def test_members_before_and_after_attach_are_recorded_and_outsiders_are_not(tmp_path, group):
    out = tmp_path / "cgroup.jsonl"
    early, deep, outsider = Member(group), Member(group / "sub"), Member(None)
    early.ask("fork 0")  # both are running inside before the recorder starts
    deep.ask("fork 0")
    recorder = start_recorder(out, "--cgroup", str(group))
    header = wait_for_line(out, recorder, lambda o: o.get("kind") == "header")
    late = Member(group)  # joins after attach: moved in by pid, as a runtime does
    children = {"early": early.ask("fork 3"), "deep": deep.ask("fork 4"),
                "outsider": outsider.ask("fork 5"), "late": late.ask("fork 6")}
    finish(recorder, early, deep, late)
    outsider.exit()
    timeline = read_timeline(out)

    assert header["cgroup"] == "/" + group.name
    assert {early.proc.pid, deep.proc.pid} <= set(header["cgroup_pids"])
    assert outsider.proc.pid not in header["cgroup_pids"]
    for member, name, code in ((early, "early", 3), (deep, "deep", 4), (late, "late", 6)):
        fork = of(timeline, ev.Fork, pid=children[name], thread=False)
        assert [f.ppid for f in fork] == [member.proc.pid], name
        reap = of(timeline, ev.Reap, pid=children[name])
        assert [(r.reaper, r.exit_code) for r in reap] == [(member.proc.pid, code)], name
    strangers = {outsider.proc.pid, children["outsider"]}
    assert not [e for e in timeline.events if getattr(e, "pid", None) in strangers]
    assert timeline.footer["counters"]["kernel"]["lost"] == 0


def test_show_marks_the_group_as_the_recorded_tree(tmp_path, group):
    out = tmp_path / "tree.jsonl"
    member = Member(group)
    recorder = start_recorder(out, "--cgroup", str(group))
    wait_for_line(out, recorder, lambda o: o.get("kind") == "header")
    child = member.ask("fork 0")
    finish(recorder, member)
    shown = subprocess.run(OMNITRACE + ["show", "--json", str(out)], cwd=REPO,
                           capture_output=True, text=True, check=True)
    views = {v["pid"]: v for v in json.loads(shown.stdout)}
    assert views[member.proc.pid]["in_recorded_tree"] and views[child]["in_recorded_tree"]
    assert views[member.proc.pid]["ns_pid"] is None  # same pid namespace as the recorder


def test_a_process_in_a_pid_namespace_carries_both_pids(tmp_path, group):
    out = tmp_path / "ns.jsonl"
    recorder = start_recorder(out, "--cgroup", str(group))
    wait_for_line(out, recorder, lambda o: o.get("kind") == "header")
    member = Member(group, ns=True)  # unshare (in the group) forks it as pid 1 of a namespace
    inner_child = member.ask("fork 7")
    orphan = member.ask("orphan")
    # the orphan's fork must be on record (so its namespace pid is known) before init reaps it
    wait_for_line(out, recorder, lambda o: o.get("kind") == "fork" and o.get("ns_pid") == orphan)
    assert member.ask("release") == orphan
    finish(recorder, member)
    timeline = read_timeline(out)

    init = [f for f in of(timeline, ev.Fork, thread=False) if f.ns_pid == 1]
    assert len(init) == 1 and init[0].ppid == member.proc.pid  # unshare forked it
    host_init = init[0].pid
    assert host_init != 1
    child = [f for f in of(timeline, ev.Fork, ppid=host_init) if f.ns_pid == inner_child]
    assert len(child) == 1
    # wait4 inside the namespace returned the namespace pid: the reap names the host pid
    reap = of(timeline, ev.Reap, pid=child[0].pid)
    assert [(r.reaper, r.exit_code) for r in reap] == [(host_init, 7)]
    host_orphan = [f.pid for f in of(timeline, ev.Fork, thread=False) if f.ns_pid == orphan]
    assert len(host_orphan) == 1
    reap = of(timeline, ev.Reap, pid=host_orphan[0])
    # init reaps orphans; its wait4 answered a namespace pid that user space translates, and the
    # kernel may free the orphan before that: a release by the kernel can come first
    assert [(r.reaper, r.exit_code) for r in reap if r.syscall != "kernel"] == [(host_init, 5)]
    assert [(r.reaper, r.status) for r in reap if r.syscall == "kernel"] in ([], [(0, None)])
    orphan_proc = build_model(timeline).process(host_orphan[0], reap[-1].t)
    assert (orphan_proc.reaped_by, orphan_proc.reap_code) == (host_init, 5)
    assert "unresolved_reaps" not in timeline.footer["counters"]["kernel"]

    shown = subprocess.run(OMNITRACE + ["show", "--json", str(out)], cwd=REPO,
                           capture_output=True, text=True, check=True)
    views = {v["pid"]: v for v in json.loads(shown.stdout)}
    assert views[host_init]["ns_pid"] == 1 and views[child[0].pid]["ns_pid"] == inner_child
    table = subprocess.run(OMNITRACE + ["show", str(out)], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    assert f"[ns pid {inner_child}]" in table


@pytest.mark.parametrize("flags, option", [
    (["--cgroup", "/nonexistent/omnitrace"], "--cgroup /nonexistent/omnitrace"),
    (["--cgroup", "/proc"], "--cgroup /proc"),
    (["--no-bpf", "--cgroup", "/"], "--cgroup"),
    (["--container", "omnitrace-no-such-container"], "--container omnitrace-no-such-container"),
])
def test_a_bad_group_is_a_one_line_error_naming_the_option(tmp_path, flags, option):
    done = subprocess.run(OMNITRACE + ["record", "-o", str(tmp_path / "x.jsonl"), *QUIET_SOURCES,
                                       *flags], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"omnitrace: error: {option}"), done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_a_container_resolves_to_its_init_s_cgroup(tmp_path, group, monkeypatch):
    """The runtime's inspect gives the init pid; its cgroup is the container's. A stand-in
    `podman` on PATH answers inspect for a process we put in a libpod-style group."""
    cid = "ab" * 32
    scope = group / f"libpod-{cid}.scope"
    scope.mkdir()
    member = Member(scope)
    try:
        member.ask("fork 0")  # it runs inside now
        fake = tmp_path / "podman"
        fake.write_text("#!/bin/sh\necho '[{\"Id\": \"%s\", \"Name\": \"web\", \"State\": "
                        "{\"Pid\": %d, \"Running\": true}}]'\n" % (cid, member.proc.pid))
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
        container = resolve_container("web")
        assert (container.name, container.id, container.pid) == ("web", cid, member.proc.pid)
        assert container.group.path == scope
        assert container.group.relative == f"/{group.name}/{scope.name}"
    finally:
        member.exit()
        scope.rmdir()


def test_a_group_given_as_proc_cgroup_names_it_is_found(group):
    relative = "/" + group.name
    assert resolve_group(relative).path == group
    with pytest.raises(CgroupError, match="^--cgroup /no/such: "):
        resolve_group("/no/such")


def test_a_shell_as_a_namespace_init_reaps_under_host_pids(tmp_path):
    """dash runs a command with vfork(2), not clone: its child's namespace pid comes from vfork's
    return, and its reap (wait4 returns the namespace pid) is written under the host pid."""
    out = tmp_path / "sh.jsonl"
    done = subprocess.run(OMNITRACE + ["record", "-o", str(out), *QUIET_SOURCES, "--",
                                       "unshare", "--pid", "--fork", "--mount-proc",
                                       "sh", "-c", 'sh -c "exit 3"; echo done'],
                          cwd=REPO, capture_output=True, text=True, timeout=EVENT_WAIT_S)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    timeline = read_timeline(out)
    # the init's own ns pid (1) comes from procfs, which a short-lived init may escape: its
    # parent, outside the namespace, is told the host pid by clone
    forks = {f.ns_pid: f for f in of(timeline, ev.Fork, thread=False) if f.ns_pid}
    assert 2 in forks
    reap = of(timeline, ev.Reap, pid=forks[2].pid)
    assert [(r.reaper, r.exit_code) for r in reap] == [(forks[2].ppid, 3)]
    assert not of(timeline, ev.Reap, pid=2)  # never under the namespace pid
    assert "unresolved_reaps" not in timeline.footer["counters"]["kernel"]


def test_a_namespace_s_teardown_reaps_are_written_as_the_kernel_s(tmp_path):
    """When a pid namespace's init exits, the kernel kills and reaps the rest of the namespace
    with no wait call (a container's teardown): each of those processes is reaped by the kernel,
    once, and the init itself by its parent's wait4."""
    out = tmp_path / "teardown.jsonl"
    done = subprocess.run(OMNITRACE + ["record", "-o", str(out), *QUIET_SOURCES, "--",
                                       "unshare", "--pid", "--fork",
                                       "sh", "-c", "sleep 1000 & sleep 1000 & exit 0"],
                          cwd=REPO, capture_output=True, text=True, timeout=EVENT_WAIT_S)
    assert done.returncode == 0, done.stderr
    timeline = read_timeline(out)
    sleeps = [f for f in of(timeline, ev.Fork, thread=False) if f.ns_pid in (2, 3)]
    assert len(sleeps) == 2 and sleeps[0].ppid == sleeps[1].ppid, timeline.events
    init = of(timeline, ev.Fork, pid=sleeps[0].ppid, thread=False)  # unshare forked it
    for fork in sleeps:
        exits = [e for e in of(timeline, ev.Exit, pid=fork.pid) if e.group_dead]
        reaps = of(timeline, ev.Reap, pid=fork.pid)
        assert len(exits) == 1
        assert [(r.reaper, r.syscall, r.status) for r in reaps] == [(0, "kernel", None)]
        assert reaps[0].t >= exits[0].t
    init_reaps = of(timeline, ev.Reap, pid=init[0].pid)
    assert [(r.reaper, r.syscall) for r in init_reaps] == [(init[0].ppid, "wait4")]
    model = build_model(timeline)
    for fork in sleeps:
        proc = model.process(fork.pid, fork.t)
        assert proc.reap_t is not None
        assert proc.reaper_label() == "the kernel (no wait call)"


def test_children_of_a_parent_ignoring_sigchld_are_reaped_by_the_kernel(tmp_path):
    """A parent that ignores SIGCHLD never reaps: the kernel releases its children at exit.
    Without this record they would look like zombies that were never reaped."""
    code = ("import os, signal\n"
            "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    os._exit(5)\n"
            "try:\n"
            "    os.waitpid(child, 0)   # returns only once the kernel released it: ECHILD\n"
            "except ChildProcessError:\n"
            "    pass\n"
            "print(child)\n")
    out = tmp_path / "sigign.jsonl"
    done = subprocess.run(OMNITRACE + ["record", "-o", str(out), *QUIET_SOURCES, "--",
                                       sys.executable, "-c", code],
                          cwd=REPO, capture_output=True, text=True, timeout=EVENT_WAIT_S)
    assert done.returncode == 0, done.stderr
    child = int(done.stdout)
    timeline = read_timeline(out)
    reaps = of(timeline, ev.Reap, pid=child)
    assert [(r.reaper, r.syscall) for r in reaps] == [(0, "kernel")]


class _NoEntries:
    """A BPF map without the entry asked for (bcc raises KeyError, as here)."""
    def __delitem__(self, key):
        raise KeyError(key)


def test_an_orphan_s_reap_is_translated_after_its_reaper_has_exited():
    """The init's wait4 for an orphan names the orphan by its namespace pid and is read from the
    ring buffer some ms later; on a busy machine the init has exited by then, so its namespace is
    no longer in /proc. The namespace it was met in at its fork translates the reap (seen as an
    unresolved reap in a busy fresh-clone run)."""
    from omnitrace.record.kernel import KernelSource
    from omnitrace.record.source import RecordContext
    gone_init, orphan, inode = 4_194_000, 4_194_001, 4026532999   # no such pids run
    assert not Path(f"/proc/{gone_init}").exists()
    ctx = RecordContext(emit=lambda event: None)
    ctx.note_ns_pid(gone_init, inode, 1)
    ctx.note_ns_pid(orphan, inode, 4)
    source = KernelSource()
    source._ctx, source._bpf = ctx, {b"traced": _NoEntries()}
    assert source._host_pid_of_reaped(gone_init, 4) == orphan
    assert source._host_pid_of_reaped(gone_init, 4) is None   # taken: its ns pid is free now
