"""`omnitrace inject signal`: roles in a real process tree, real signals, and what it refuses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from click.testing import CliRunner

from omnitrace.inject.cli import inject
from omnitrace.inject.signals import InjectionRefused, inject_signal
from omnitrace.testbed.harness import is_gone
from tests.harness import wait_for

# A miniature serve tree: root -> resource tracker look-alike, then two titled stage processes.
# Every process records the signals it receives in its own file, then exits 128+signum.
FAKE_SERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    out = sys.argv[1]
    def trap(name):
        def handler(signum, _frame):
            with open(os.path.join(out, f"{name}-{os.getpid()}"), "a") as f:
                f.write(f"{signum}\\n")
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, handler); signal.signal(signal.SIGINT, handler)
    role = sys.argv[2] if len(sys.argv) > 2 else "root"
    trap(role)  # before the title: the test treats a titled stage as ready for its signal
    if role == "root":
        kids = [subprocess.Popen([sys.executable, "-c",
                 "from multiprocessing.resource_tracker import main;import time;time.sleep(60)"])]
        for i in range(2):
            kids.append(subprocess.Popen([sys.executable, __file__, out, f"stage{i}"]))
    else:
        import setproctitle; setproctitle.setproctitle("VLLM::StageEngineCoreProc_noid_replica0_DP0")
    deadline = time.monotonic() + 60  # bounded even if the test dies
    while time.monotonic() < deadline:
        time.sleep(0.05)
""")


@pytest.fixture
def server(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        kids = root.children(recursive=True)
        if sum("VLLM::" in p.name() for p in kids if p.is_running()) == 2:
            break
        time.sleep(0.05)
    else:
        pytest.fail("fake server did not start its stages")
    tree = [root] + root.children(recursive=True)
    yield proc, tree, tmp_path
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=5)


def signalled(tmp_path) -> dict[str, list[int]]:
    """role-pid -> signals received, from the files the fake processes wrote."""
    return {f.name: [int(x) for x in f.read_text().split()] for f in tmp_path.iterdir()
            if "-" in f.name and f.suffix == ""}




def test_worker_target_signals_first_titled_stage_only(server):
    proc, tree, tmp = server
    stages = [p for p in tree if "VLLM::" in p.name()]
    fault = inject_signal(proc.pid, "worker", "TERM")
    assert fault.pids == [stages[0].pid]
    wait_for(lambda: any(signalled(tmp).values()), 10, "the signal written down")
    (name, signals), = signalled(tmp).items()
    assert name.endswith(f"-{stages[0].pid}") and signals == [signal.SIGTERM]
    assert proc.poll() is None, "the serve root must not be touched by a worker kill"


def test_serve_target_signals_root_only(server):
    proc, tree, tmp = server
    fault = inject_signal(proc.pid, "serve", "INT")
    assert fault.pids == [proc.pid]
    assert proc.wait(timeout=10) == 128 + signal.SIGINT
    assert all(p.is_running() for p in tree[1:])


def test_all_signals_root_first_then_each_live_descendant(server):
    proc, tree, tmp = server
    fault = inject_signal(proc.pid, "all", "KILL", gap_s=0.01)
    assert fault.pids[0] == proc.pid
    assert sorted(fault.pids + fault.missed) == sorted(p.pid for p in tree)
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive


def test_pattern_target_matches_name_and_cmdline(server):
    proc, tree, tmp = server
    tracker = next(p for p in tree if "resource_tracker" in " ".join(p.cmdline()))
    fault = inject_signal(proc.pid, "resource_tracker", "KILL")
    assert fault.pids == [tracker.pid]
    wait_for(lambda: is_gone(tracker.pid), 10, "the tracker gone")


@pytest.mark.parametrize("server_pid, target, message", [
    (1, "serve", "refusing to signal pid 1"),
    (os.getpid(), "serve", "omnitrace's own process"),
])
def test_refuses_init_and_itself(server_pid, target, message):
    with pytest.raises(InjectionRefused, match=message):
        inject_signal(server_pid, target, "TERM")


def test_refuses_pid_outside_the_server_tree(server):
    proc, tree, tmp = server
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(InjectionRefused, match="not in the process tree"):
            inject_signal(proc.pid, str(bystander.pid), "KILL")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_refuses_own_ancestor_as_server():
    with pytest.raises(InjectionRefused, match="ancestor of omnitrace"):
        inject_signal(os.getppid(), "serve", "TERM")


def test_cli_reports_refusal_as_one_line_error(server):
    proc, tree, tmp = server
    result = CliRunner().invoke(inject, ["signal", "--server", str(proc.pid), "--target",
                                         "no-such-process-name", "--signal", "TERM"])
    assert result.exit_code != 0
    assert "no process in the tree" in str(result.exception)
    assert proc.poll() is None and not signalled(tmp)


def test_unknown_signal_is_refused(server):
    proc, tree, tmp = server
    with pytest.raises(InjectionRefused, match="unknown signal"):
        inject_signal(proc.pid, "serve", "BOGUS")


def test_fault_mark_reaches_the_recorder_with_the_signalled_pids(server):
    from omnitrace.record.otlp import OtlpReceiver
    from omnitrace.record.source import RecordContext
    proc, tree, tmp = server
    spans = []
    receiver = OtlpReceiver()
    ctx = RecordContext(emit=spans.append)
    env = {**os.environ, **receiver.prepare(ctx), "OMNITRACE_SCENARIO": "no-load/sigterm/serve"}
    receiver.start(ctx)
    try:
        cli = subprocess.run([sys.executable, "-m", "omnitrace.inject", "signal", "--server",
                              str(proc.pid), "--target", "serve", "--signal", "TERM"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        wait_for(lambda: spans, 5, "the fault span")  # exported before the command returned
    finally:
        receiver.stop()
    (mark,) = spans
    assert mark.attributes["omnitrace.mark"] == "fault"
    assert mark.attributes["omnitrace.fault.signal"] == "SIGTERM"
    assert mark.attributes["omnitrace.fault.target"] == "serve"
    assert list(mark.attributes["omnitrace.fault.pids"]) == [proc.pid]
    assert mark.attributes["omnitrace.scenario"] == "no-load/sigterm/serve"
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def test_cli_refusal_is_one_line_and_exit_2():
    cli = subprocess.run([sys.executable, "-m", "omnitrace.inject", "signal", "--server", "1",
                          "--target", "serve", "--signal", "KILL"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [
        "omnitrace: error: --server: refusing to signal pid 1 (init or a process group)"]


MINI_SERVER = os.path.join(os.path.dirname(__file__), "servers", "mini_server.py")


@pytest.fixture
def own_titled_server(tmp_path):
    """A real server whose worker has a title no built-in pattern knows, and a matrix naming it."""
    from omnitrace.inject.server import free_port
    matrix = tmp_path / "mine.yaml"
    matrix.write_text("extends: vllm-omni\npatterns: {worker: [mytool-shard]}\n")
    proc = subprocess.Popen([sys.executable, MINI_SERVER, "--port", str(free_port()),
                             "--worker-title", "mytool-shard-0", "--lifetime", "60"])
    try:
        worker = wait_for(lambda: next((p for p in psutil.Process(proc.pid).children()
                                        if "mytool-shard" in " ".join(p.cmdline())), None),
                          15, "the titled worker")
        yield proc, worker, matrix
    finally:
        proc.kill()
        proc.wait()
        if not is_gone(worker.pid):
            worker.kill()


def test_worker_target_uses_the_matrix_patterns(own_titled_server):
    proc, worker, matrix = own_titled_server
    inject = [sys.executable, "-m", "omnitrace.inject", "signal", "--server", str(proc.pid),
              "--target", "worker", "--signal", "TERM"]
    builtin = subprocess.run(inject, capture_output=True, text=True, timeout=30)
    assert builtin.returncode == 2 and "no process in the tree" in builtin.stderr
    mine = subprocess.run(inject + ["--matrix", str(matrix)], capture_output=True, text=True,
                          timeout=30)
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout.strip() == f"sent SIGTERM to {worker.pid}"
    wait_for(lambda: is_gone(worker.pid), 10, "the worker gone")
    assert proc.poll() is None, "only the worker was signalled"


class _Titled:
    """Just what select() reads of a psutil.Process: its name and cmdline."""

    def __init__(self, pid, title):
        self.pid, self.title = pid, title

    def name(self):
        return self.title[:15]

    def cmdline(self):
        return [self.title]


def test_worker_target_is_the_worker_not_the_engine_core_before_it():
    """Real vLLM's breadth-first tree lists VLLM::EngineCore before its VLLM::Worker, and the
    seed's `VLLM::` pattern matches both: a worker row must signal the worker."""
    from omnitrace.inject.signals import select
    from omnitrace.model.roles import RolePatterns
    tree = [_Titled(100, "vllm serve /m"),
            _Titled(101, "python3 -B -c from multiprocessing.resource_tracker import main"),
            _Titled(102, "VLLM::EngineCore"), _Titled(103, "VLLM::Worker")]
    for patterns in (RolePatterns(), RolePatterns(worker=["VLLM::Worker"], engine=["EngineCore"])):
        assert [p.pid for p in select(tree, "worker", patterns)] == [103]
    # a tree whose only worker-like processes are engines (the testbed's stages): the first one
    stages = [_Titled(200, "serve"), _Titled(201, "VLLM::StageEngineCoreProc_thinker"),
              _Titled(202, "VLLM::StageEngineCoreProc_talker")]
    assert [p.pid for p in select(stages, "worker")] == [201]
