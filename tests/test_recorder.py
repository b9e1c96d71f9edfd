"""`omnitrace record` as a user runs it: crash safety, sudo privilege drop, signal forwarding,
--attach, the procfs fallback, doctor, and bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from omnitrace import events as ev
from omnitrace.timeline import read_timeline
from tests.harness import wait_for
from tests.recording import (OMNITRACE, REPO, descendants, kill_session, record_lifecycle_tree,
                             start_recording)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root (CI runs as root)")


def process_forks(path) -> int:
    """Process forks in what has been written so far (the recorder's own fork record included)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    complete = text.split("\n")[:-1]  # a half-written last line is not read back
    return sum('"kind":"fork"' in line and '"thread":false' in line for line in complete)


def lines(path):
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def test_recorder_killed_with_sigkill_leaves_a_readable_file(tmp_path):
    path = tmp_path / "crash.jsonl"
    workload = [sys.executable, "-c",
                "import os, time\n"
                "while True:\n"
                "    pid = os.fork()\n"
                "    if pid == 0: os._exit(0)\n"
                "    os.waitpid(pid, 0); time.sleep(0.01)\n"]
    proc = start_recording(path, workload)
    orphans = []
    try:
        # the very fact asserted below, not a line count: a busy machine writes the forks'
        # snapshots, signals and reaps in other proportions (50 lines once held only 9 forks)
        wait_for(lambda: process_forks(path) > 10, timeout=120, what="11 forks on the timeline")
        orphans = descendants(proc.pid)  # the workload outlives a SIGKILLed recorder
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_session(proc, also=orphans)
    timeline = read_timeline(path)
    assert timeline.truncated
    assert any("truncated: no footer" in w for w in timeline.warnings)
    forks = [e for e in timeline.events if isinstance(e, ev.Fork) and not e.thread]
    assert len(forks) > 10


def test_under_sudo_the_command_runs_as_the_invoking_user(tmp_path):
    path = tmp_path / "sudo.jsonl"
    tmp_path.chmod(0o777)
    nobody = 65534
    proc = start_recording(path, ["/bin/sh", "-c", "id -u; id -g"],
                           env={"SUDO_UID": str(nobody), "SUDO_GID": str(nobody), "SUDO_USER": "nobody"},
                           stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.split() == [str(nobody), str(nobody)]
    assert path.stat().st_uid == nobody  # the timeline belongs to the invoking user too


def test_sigterm_to_the_recorder_is_forwarded_and_its_status_is_the_commands(tmp_path):
    path = tmp_path / "forward.jsonl"
    workload = [sys.executable, "-c",
                "import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n"]
    proc = start_recording(path, workload, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        kill_session(proc)
    timeline = read_timeline(path)
    assert timeline.footer["exit_status"] == 42
    forwarded = [e for e in timeline.events if isinstance(e, ev.SignalGenerate) and e.signal == 15]
    assert forwarded and forwarded[0].sender_pid == proc.pid


def test_attach_follows_an_existing_tree(tmp_path):
    path = tmp_path / "attach.jsonl"
    target = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time\n"
                               "kid = subprocess.Popen(['sleep', '60'])\n"
                               "print(kid.pid, flush=True)\n"
                               "sys.stdin.readline(); kid.kill(); kid.wait()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    kid = int(target.stdout.readline())
    proc = subprocess.Popen(OMNITRACE + ["record", "-o", str(path), "--no-health", "--no-otlp",
                                         "--gpu", "off", "--attach", str(target.pid)], cwd=REPO)
    try:
        wait_for(lambda: lines(path) >= 2, what="the recorder to start")
        time.sleep(0.5)  # the BPF programs are attached once the header's snapshots are written
        target.stdin.write("go\n")
        target.stdin.flush()
        target.wait(timeout=10)
        assert proc.wait(timeout=30) == 0
    finally:
        target.kill()
        kill_session(proc)
    timeline = read_timeline(path)
    reaps = {e.pid: e for e in timeline.events if isinstance(e, ev.Reap)}
    assert reaps[kid].signal == 9 and reaps[kid].reaper == target.pid


def test_procfs_fallback_gives_the_same_lifetimes_within_its_precision(tmp_path):
    kernel_path, procfs_path = tmp_path / "bpf.jsonl", tmp_path / "procfs.jsonl"
    pids_k, _ = record_lifecycle_tree(kernel_path)
    pids_p, status = record_lifecycle_tree(procfs_path, "--no-bpf")
    assert status == 0
    fallback = read_timeline(procfs_path)
    assert "kernel" not in fallback.header["sources"]
    assert fallback.header["sources"]["procfs"]["lifecycle"] is True
    precision_s = fallback.header["sources"]["procfs"]["precision_ns"] / 1e9
    kernel = read_timeline(kernel_path)

    def lifetimes(timeline, pids):
        starts = {e.pid: e.t for e in timeline.events if isinstance(e, ev.Fork) and not e.thread}
        exits = {e.pid: e.t for e in timeline.events if isinstance(e, ev.Exit) and e.group_dead}
        t0 = starts[pids["parent"]]
        return {role: ((starts[pid] - t0) / 1e9, (exits[pid] - t0) / 1e9)
                for role, pid in pids.items() if role != "parent"}

    expected, seen = lifetimes(kernel, pids_k), lifetimes(fallback, pids_p)
    assert set(seen) == set(expected)
    # Two separate runs of the same workload: allow the poll interval, clock ticks and run jitter.
    slack = precision_s + 0.4
    for role in ("killed", "handler", "default", "renamed", "zombie", "orphan"):
        assert abs(seen[role][1] - seen[role][0] - (expected[role][1] - expected[role][0])) < slack, role
    reaps = {e.pid: e for e in fallback.events if isinstance(e, ev.Reap)}
    assert reaps[pids_p["zombie"]].t - [e.t for e in fallback.events if isinstance(e, ev.Exit)
                                         and e.pid == pids_p["zombie"]][0] > 0.4e9


def test_doctor_passes_on_this_machine():
    out = subprocess.run(OMNITRACE + ["doctor"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "tracepoint programs" in out.stdout and "compiles and attaches" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["record"], "nothing to record"),
    (["record", "--attach", "999999999"], "--attach 999999999: no such process"),
    (["record", "--", "/nonexistent/binary"], "cannot run '/nonexistent/binary'"),
    (["show", "/nonexistent.jsonl"], "/nonexistent.jsonl: cannot open"),
])
def test_bad_input_is_one_line_not_a_traceback(tmp_path, argv, message):
    out = subprocess.run(OMNITRACE + argv[:1] + ["-o", str(tmp_path / "x.jsonl")] * (argv[0] == "record")
                         + argv[1:], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("omnitrace: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr
