"""The kernel source, for real: a recorded parent forks children that are killed, terminated,
orphaned, renamed and left as zombies; the timeline must show each fact with its actors.

These run as root with BPF on this machine and in CI; they are not skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from omnitrace import events as ev
from omnitrace.record.kernel import unavailable_reason
from omnitrace.timeline import read_timeline
from tests.recording import OMNITRACE, REPO, record_lifecycle_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root (CI runs as root)")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    assert unavailable_reason() is None, f"BPF must work on this machine: {unavailable_reason()}"
    path = tmp_path_factory.mktemp("kernel") / "tree.jsonl"
    pids, status = record_lifecycle_tree(path)
    timeline = read_timeline(path)
    return timeline, pids, status, path


def of(timeline, cls, **match):
    return [e for e in timeline.events if isinstance(e, cls)
            and all(getattr(e, k) == v for k, v in match.items())]


def one(timeline, cls, **match):
    found = of(timeline, cls, **match)
    assert len(found) == 1, f"expected one {cls.__name__} {match}, found {found}"
    return found[0]


def test_recording_is_complete_and_exit_status_is_the_commands(recording):
    timeline, _, status, _ = recording
    assert status == 0
    assert timeline.footer is not None and timeline.footer["exit_status"] == 0
    assert timeline.footer["counters"]["kernel"]["lost"] == 0
    assert timeline.header["sources"]["kernel"]["backend"] == "bcc"


def test_every_fork_names_its_parent(recording):
    timeline, pids, _, _ = recording
    for role in ("killed", "handler", "default", "threaded", "middle", "renamed", "zombie", "outside"):
        one(timeline, ev.Fork, pid=pids[role], ppid=pids["parent"], thread=False)
    one(timeline, ev.Fork, pid=pids["orphan"], ppid=pids["middle"], thread=False)


def test_threads_are_forks_of_their_process_not_new_processes(recording):
    timeline, pids, _, _ = recording
    threads = of(timeline, ev.Fork, pid=pids["threaded"], thread=True)
    assert threads and all(f.tid != pids["threaded"] for f in threads)


def test_sigkill_has_sender_target_result_and_default_disposition(recording):
    timeline, pids, _, _ = recording
    sent = one(timeline, ev.SignalGenerate, target_pid=pids["killed"], signal=9)
    assert (sent.sender_pid, sent.result) == (pids["parent"], "delivered")
    got = one(timeline, ev.SignalDeliver, pid=pids["killed"], signal=9)
    assert got.disposition == "default" and got.t >= sent.t
    reap = one(timeline, ev.Reap, pid=pids["killed"])
    assert (reap.signal, reap.exit_code, reap.reaper) == (9, None, pids["parent"])


def test_sigterm_to_a_handler_exits_3(recording):
    timeline, pids, _, _ = recording
    assert one(timeline, ev.SignalDeliver, pid=pids["handler"], signal=15).disposition == "handler"
    assert one(timeline, ev.ExitGroup, pid=pids["handler"]).code == 3
    assert one(timeline, ev.Reap, pid=pids["handler"]).exit_code == 3


def test_sigterm_without_handler_dies_of_sigterm(recording):
    timeline, pids, _, _ = recording
    got = one(timeline, ev.SignalDeliver, pid=pids["default"], signal=15)
    assert got.disposition == "default" and got.delivered_as == 9  # the kernel's group kill
    assert one(timeline, ev.Reap, pid=pids["default"]).signal == 15
    assert not of(timeline, ev.ExitGroup, pid=pids["default"])


def test_process_exit_reported_by_a_thread_other_than_the_leader(recording):
    timeline, pids, _, _ = recording
    exits = of(timeline, ev.Exit, pid=pids["threaded"])
    last = [e for e in exits if e.group_dead]
    assert len(last) == 1 and last[0].tid != pids["threaded"]
    leader = [e for e in exits if e.tid == pids["threaded"]]
    assert leader and not leader[0].group_dead and leader[0].t < last[0].t
    assert one(timeline, ev.Reap, pid=pids["threaded"]).exit_code == 4


def test_orphan_is_reaped_by_the_subreaper_it_was_handed_to(recording):
    timeline, pids, _, _ = recording
    middle_exit = one(timeline, ev.Exit, pid=pids["middle"], group_dead=True)
    orphan_exit = one(timeline, ev.Exit, pid=pids["orphan"], group_dead=True)
    assert middle_exit.t < orphan_exit.t
    reap = one(timeline, ev.Reap, pid=pids["orphan"])
    assert reap.reaper == pids["parent"] != pids["middle"]


def test_setproctitle_rename_is_recorded(recording):
    timeline, pids, _, _ = recording
    renames = of(timeline, ev.Rename, pid=pids["renamed"])
    assert any(r.newcomm == "VLLM::StageEngi" for r in renames)  # comm holds 15 characters


def test_zombie_is_reaped_only_later(recording):
    timeline, pids, _, _ = recording
    exit_ = one(timeline, ev.Exit, pid=pids["zombie"], group_dead=True)
    reap = one(timeline, ev.Reap, pid=pids["zombie"])
    assert (reap.t - exit_.t) / 1e9 >= 0.5


def test_kill_from_outside_the_tree_shows_its_sender(recording):
    timeline, pids, _, _ = recording
    sent = one(timeline, ev.SignalGenerate, target_pid=pids["outside"], signal=9)
    assert sent.sender_pid == os.getpid()  # this test process, which is not traced


def test_events_are_on_one_monotonic_clock(recording):
    timeline, _, _, _ = recording
    assert timeline.header["t0"] <= timeline.events[0].t <= timeline.events[-1].t <= timeline.footer["t"]


def test_show_json_contract(recording):
    _, pids, _, path = recording
    out = subprocess.run(OMNITRACE + ["show", "--json", str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    views = {v["pid"]: v for v in json.loads(out)}
    # the contract (docs/timeline-format.md): these fields stay; fields may be added, never changed
    keys = {"pid", "ppid", "name", "cmdline", "start", "exit", "exit_code", "exit_signal",
            "reaped_by", "reparented_to", "signals_received"}
    added = {"role", "in_recorded_tree", "reparented_at", "signals", "ns_pid", "container"}
    assert all(keys <= set(v) <= keys | added for v in views.values()), views
    assert views[pids["killed"]]["exit_signal"] == "SIGKILL"
    assert views[pids["default"]]["exit_signal"] == "SIGTERM"
    assert views[pids["handler"]]["exit_code"] == 3
    assert views[pids["handler"]]["signals_received"][0] | {"time": None} == {
        "signal": "SIGTERM", "sender_pid": pids["parent"], "time": None, "disposition": "handler"}
    assert views[pids["orphan"]]["ppid"] == pids["middle"]
    assert views[pids["orphan"]]["reparented_to"] == pids["parent"]
    assert views[pids["orphan"]]["reaped_by"] == pids["parent"]
    assert views[pids["renamed"]]["name"].startswith("VLLM::StageEngi")
    assert views[pids["parent"]]["start"] >= 0 and views[pids["parent"]]["exit"] > 0


@pytest.fixture
def small_memory_cgroup():
    """A memory cgroup limited to 32 MiB: cgroup v1 (here and in CI) or v2."""
    name = f"omnitrace-test-{os.getpid()}"
    if os.path.isdir("/sys/fs/cgroup/memory"):
        path, limits = f"/sys/fs/cgroup/memory/{name}", {"memory.limit_in_bytes": 32 << 20}
    elif "memory" in _text("/sys/fs/cgroup/cgroup.subtree_control").split():
        # no swap either, or the hoarder is swapped out instead of OOM-killed
        path, limits = f"/sys/fs/cgroup/{name}", {"memory.max": 32 << 20, "memory.swap.max": 0}
    else:
        pytest.skip("no memory cgroup controller (v1 or v2) to confine an OOM to")
    os.makedirs(path, exist_ok=True)
    for knob, value in limits.items():
        if os.path.exists(os.path.join(path, knob)):
            with open(os.path.join(path, knob), "w") as f:
                f.write(str(value))
    yield path
    os.rmdir(path)


def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def test_kernel_oom_kill_is_recorded(tmp_path, small_memory_cgroup):
    from tests.recording import WORKLOADS, kill_session, start_recording
    path = tmp_path / "oom.jsonl"
    proc = start_recording(path, [sys.executable, str(WORKLOADS / "host_oom.py"), small_memory_cgroup])
    try:
        assert proc.wait(timeout=60) == 128 + 9
    finally:  # a hoarder left running would keep the cgroup busy and the memory taken
        if proc.poll() is None:
            kill_session(proc)
    timeline = read_timeline(path)
    victim = one(timeline, ev.OomKill)
    assert victim.pid == timeline.events[0].pid  # the recorded command itself
    assert one(timeline, ev.Reap, pid=victim.pid).signal == 9


def test_ring_buffer_overflow_is_counted_and_written_as_lost_records():
    """A one-page ring buffer (about 18 records) and a burst of thousands of signals between two
    polls: the reserve failures must come out as `lost` records, never silently."""
    import signal as signals
    import threading

    from omnitrace.record.kernel import KernelSource
    from omnitrace.record.source import RecordContext
    seen: list = []
    ctx = RecordContext(emit=seen.append)
    source = KernelSource(ringbuf_pages=1)
    source.prepare(ctx)
    previous = signals.signal(signals.SIGUSR1, lambda *_: None)
    try:
        source.add_process(os.getpid())
        source.start(ctx)
        burst = threading.Thread(target=lambda: [os.kill(os.getpid(), signals.SIGUSR1)
                                                 for _ in range(5000)])
        burst.start()
        burst.join()
    finally:
        source.stop()
        signals.signal(signals.SIGUSR1, previous)
    lost = [e for e in seen if isinstance(e, ev.Lost)]
    recorded = [e for e in seen if isinstance(e, ev.SignalGenerate) and e.signal == 10]
    assert lost and source.counters()["lost"] == sum(e.count for e in lost) > 0
    assert all(e.source == "kernel" and e.t <= e.end for e in lost)
    # every signal sent is either on the timeline or counted as lost (delivers are extra records)
    assert len(recorded) + source.counters()["lost"] >= 5000


LIVES_UNTIL_TOLD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
child.wait()
"""


def test_a_snapshot_read_before_an_exit_and_written_after_it_is_the_same_process(tmp_path):
    """On a busy machine a procfs snapshot can be read while a process runs and land on the
    timeline after the kernel's exit and reap records. That is the same process, dead: not a
    second incarnation of the pid, alive at the end with a start time of its own."""
    from bisect import bisect_right

    from omnitrace.model.build import build_model
    from omnitrace.record.procfs import snapshot
    from tests.recording import kill_session, start_recording
    path = tmp_path / "late.jsonl"
    proc = start_recording(path, [sys.executable, "-c", LIVES_UNTIL_TOLD],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        late = snapshot(pid, "periodic")  # read while it runs...
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            kill_session(proc)
    timeline = read_timeline(path)
    fork = one(timeline, ev.Fork, pid=pid, thread=False)
    reap = one(timeline, ev.Reap, pid=pid)
    # procfs's start is clock ticks, so it is the kernel's fork time to a tick (a wall-clock
    # create_time on a whole-second boot time was up to a second off)
    assert 0 <= fork.t - late.create_time < 20_000_000, (fork.t, late.create_time)
    late.t = reap.t + 1_000_000  # ...and written after the exit's records
    timeline.events.insert(bisect_right([e.t for e in timeline.events], late.t), late)
    (process,) = [p for p in build_model(timeline).processes if p.pid == pid]
    assert process.start == fork.t and process.exit_t is not None and process.reap_t == reap.t
