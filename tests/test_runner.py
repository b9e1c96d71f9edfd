"""`omnitrace matrix run` end to end: real recordings of the testbed, verified.

The correct testbed passes every row; each defect fails the rows it breaks on the rule that names
it; Ctrl+C leaves nothing running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from omnitrace.testbed.harness import is_gone
from omnitrace.verify.matrix import load_matrix
from tests.harness import matrix_run

TESTBED = f"{sys.executable} -m omnitrace.cli testbed serve --port {{port}}"
SEED_ROWS = "no-load/*,under-load/*,oom/*"


@pytest.fixture
def env(tmp_path):
    # a private simulated GPU per test, so rows never see another test's memory
    return {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu"), "PYTHONPATH": os.getcwd()}


def verdicts(report) -> dict[tuple[str, str], str]:
    return {(s["id"], r["id"]): r["verdict"] for s in report["scenarios"] for r in s["rules"]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_full_matrix_passes_against_the_correct_testbed(env, tmp_path):
    t0 = time.monotonic()
    # the seed rows (abnormal-input/* are tests/test_abnormal_input.py's)
    cli, report = matrix_run(tmp_path / "run", "--scenarios", SEED_ROWS, env=env, timeout=880)
    assert report is not None, cli.stderr[-3000:]
    show = subprocess.run([sys.executable, "-m", "omnitrace.cli", "matrix", "show", "--json"],
                          env=env, capture_output=True, text=True, timeout=60)
    rows = [r["id"] for r in json.loads(show.stdout)["rows"]
            if r["id"].split("/")[0] in ("no-load", "under-load", "oom")]   # the seed's
    assert len(rows) == 15
    assert sorted(s["id"] for s in report["scenarios"]) == sorted(rows)
    failed = {k: v for k, v in verdicts(report).items() if v == "fail"}
    assert not failed, cli.stdout[-4000:]
    assert cli.returncode == 0, cli.stdout[-4000:]
    # the GPU rules ran on the simulated device and passed
    assert all(v == "pass" for (s, r), v in verdicts(report).items() if r == "gpu-released")
    assert "leftover" not in cli.stdout
    assert len(list((tmp_path / "run").glob("*.jsonl"))) == len(rows)
    print(f"full matrix: {time.monotonic() - t0:.1f} s")


def test_unknown_scenario_glob_is_a_one_line_error(env, tmp_path):
    cli, report = matrix_run(tmp_path / "run", "--scenarios", "no-such/*", env=env, timeout=60)
    assert cli.returncode == 2
    assert cli.stderr.strip().startswith("omnitrace: error: --scenarios 'no-such/*' matches no row")


def test_ctrl_c_leaves_nothing_running(env, tmp_path):
    runner = subprocess.Popen(
        [sys.executable, "-m", "omnitrace.cli", "matrix", "run", "--out", str(tmp_path / "run"),
         # healthy-under-oom never settles, so the row is mid-window when Ctrl+C comes
         "--serve", TESTBED + " --defect healthy-under-oom", "--scenarios", "oom/gpu-hog"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 60
        hog_seen = False
        while time.monotonic() < deadline and not hog_seen:  # wait for the hog: the fault is on
            for p in psutil.Process(runner.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
                try:
                    hog_seen = hog_seen or "oom-hog" in " ".join(p.cmdline())
                except psutil.Error:
                    pass
            time.sleep(0.1)
        assert hog_seen, "the OOM row never started its hog"
        os.killpg(runner.pid, signal.SIGINT)  # what the terminal does on Ctrl+C
        runner.wait(60)
        assert runner.returncode != 0
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=10)
        assert not [p for p in alive if not is_gone(p.pid)], alive
    finally:
        for p in [*seen.values()]:
            try:
                p.kill()
            except psutil.Error:
                pass
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_free_port_is_bindable_and_outside_the_range_connect_draws_from():
    import socket

    from omnitrace.inject.server import LOWEST_PORT, _ephemeral_range, free_port
    low, high = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(LOWEST_PORT <= p < low for p in ports), ports
    assert len(ports) > 1  # drawn at random: two runs at once rarely pick the same
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))


MINI_SERVER = f"{sys.executable} {os.path.join(os.path.dirname(__file__), 'servers', 'mini_server.py')}"


def own_matrix(tmp_path, text: str = "", thresholds: str = "unavailable_s: 3"):
    """A user's matrix over the built-in one, with short windows."""
    path = tmp_path / "mine.yaml"
    path.write_text("extends: vllm-omni\n"
                    f"thresholds: {{{thresholds}}}\n" + text +
                    "rows:\n"
                    "  - {id: no-load/sigkill/worker, observe_s: 10, thresholds: {exit_s: 3, residue_s: 4}}\n"
                    "  - {id: no-load/sigkill/serve, observe_s: 8,\n"
                    "     thresholds: {exit_s: 3, residue_s: 5, gpu_release_s: 2}}\n")
    return path


def test_the_driver_picks_the_worker_by_the_matrix_patterns(env, tmp_path):
    matrix = own_matrix(tmp_path, "patterns: {worker: [mytool-shard]}\n")
    cli, report = matrix_run(tmp_path / "run", "--matrix", str(matrix), "--scenarios",
                             "no-load/sigkill/worker", "--serve",
                             MINI_SERVER + " --port {port} --worker-title mytool-shard-0", env=env)
    assert report is not None and cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-2000:]
    assert verdicts(report)[("no-load/sigkill/worker", "target-exits")] == "pass"
    # and it stayed unavailable for the whole hold, watched: the row settled only after it
    assert verdicts(report)[("no-load/sigkill/worker", "service-unavailable")] == "pass"
    outcome = json.loads((tmp_path / "run" / "no-load_sigkill_worker.outcome.json").read_text())
    assert len(outcome["fault_pids"]) == 1


def test_a_health_endpoint_that_flaps_back_fails_service_unavailable(env, tmp_path):
    matrix = own_matrix(tmp_path, thresholds="unavailable_s: 3, unavailable_hold_s: 4")
    cli, report = matrix_run(tmp_path / "run", "--matrix", str(matrix), "--scenarios",
                             "no-load/sigkill/worker", "--serve",
                             MINI_SERVER + " --port {port} --flap-after 2", env=env)
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-2000:]
    (scenario,) = report["scenarios"]
    rule = next(r for r in scenario["rules"] if r["id"] == "service-unavailable")
    assert rule["verdict"] == "fail", cli.stdout[-3000:]
    assert "HTTP 200" in " ".join(e["text"] for e in rule["evidence"])
    assert cli.returncode == 1


def processes_with(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.mark.parametrize("daemon", ["double-fork", "setsid"])
def test_a_daemon_forked_before_the_fault_is_residue_and_is_not_left_running(env, tmp_path, daemon):
    """The daemon was re-parented away from the server before the fault, so it is no descendant
    of the server's root any more; it is still the server's: the row must watch it, fail
    no-residue, and leave nothing running."""
    tag = f"residue-{daemon}-{os.getpid()}-{tmp_path.name}"
    try:
        cli, report = matrix_run(tmp_path / "run", "--matrix", str(own_matrix(tmp_path)),
                                 "--scenarios", "no-load/sigkill/serve", "--serve",
                                 MINI_SERVER + f" --port {{port}} --daemon {daemon} --tag {tag}",
                                 env=env)
        assert report is not None, cli.stdout[-3000:] + cli.stderr[-2000:]
        rule = next(r for r in report["scenarios"][0]["rules"] if r["id"] == "no-residue")
        assert rule["verdict"] == "fail", cli.stdout[-3000:]
        assert "still alive at scenario end" in " ".join(e["text"] for e in rule["evidence"])
        assert cli.returncode == 1
        assert "leftover process" in cli.stdout
        assert not [p for p in processes_with(tag) if not is_gone(p.pid)]
    finally:
        for proc in processes_with(tag):
            proc.kill()


@pytest.mark.parametrize("rate, probed_after_fault", [("0", False), ("20", True)])
def test_health_rate_governs_every_health_probe_of_a_row(env, tmp_path, rate, probed_after_fault):
    """--health-rate 0: neither the recorder nor the scenario driver asks /health after the
    fault (a probe can change what a server does: docs/matrix-run.md)."""
    log = tmp_path / "requests.log"
    cli, report = matrix_run(tmp_path / "run", "--matrix", str(own_matrix(tmp_path)),
                             "--health-rate", rate, "--scenarios", "no-load/sigkill/worker",
                             "--serve", MINI_SERVER + f" --port {{port}} --request-log {log}",
                             env=env)
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-2000:]
    requests = log.read_text().splitlines()
    assert "/health before" in requests  # the driver waits for the server's health 200
    assert ("/health after" in requests) == probed_after_fault
    assert verdicts(report)[("no-load/sigkill/worker", "target-exits")] == "pass"


def test_a_leftover_is_told_but_never_decides_no_residue():
    """The window is the law: a process the clean-up killed after the window outlived the window,
    not necessarily the limit, so it cannot fail the rule; it does undo a pass (the tree missed it)."""
    from pathlib import Path

    from omnitrace.inject.runner import RowRun, residue_left
    from omnitrace.verify.matrix import load_matrix
    from omnitrace.verify.report import RuleVerdict, ScenarioReport
    row = load_matrix(None).row("no-load/sigkill/serve")

    def judged(verdict: str, row=row) -> RuleVerdict:
        rule = RuleVerdict("no-residue", "", verdict, None, 30.0, "s", "the window said so", [])
        run = RowRun(row, Path("row.jsonl"), outcome={"leftovers": ["4242 daemon"]})
        residue_left(run, ScenarioReport(row.id, row.id, "marks", 0, 8, 1, "SIGKILL", row.target,
                                         [], 1, [rule]))
        return rule

    undecided = judged("inconclusive")
    assert undecided.verdict == "inconclusive" and "4242 daemon" in undecided.evidence[0].text
    assert "after the window" in undecided.summary
    passed = judged("pass")
    assert passed.verdict == "inconclusive" and "tree is incomplete" in passed.summary
    failed = judged("fail")
    assert failed.verdict == "fail" and failed.summary == "the window said so"
    kept = judged("inconclusive", row=load_matrix(None).row("no-load/sigkill/worker"))
    assert kept.evidence == []  # a degraded server left running is correct on a worker row


def test_a_serve_row_that_left_its_server_running_fails_the_run_whatever_the_verdicts():
    """The verdict may stay undecided (the window is the law) but CI must not go green while a
    daemon of the server kept running; a worker row's degraded server running on is correct."""
    from pathlib import Path

    from omnitrace.inject.runner import RowRun, exit_code
    from omnitrace.verify.matrix import load_matrix
    from omnitrace.verify.report import Report, RuleVerdict, ScenarioReport

    def code(row_id: str, leftovers: list[str]) -> int:
        row = load_matrix(None).row(row_id)
        rule = RuleVerdict("no-residue", "", "inconclusive", None, 30.0, "s", "undecided", [])
        scenario = ScenarioReport(row.id, row.id, "marks", 0, 8, 1, "SIGKILL", row.target, [], 1,
                                  [rule])
        report = Report(timeline="t", matrix="vllm-omni", scenarios=[scenario], warnings=[])
        return exit_code(report, [RowRun(row, Path("r.jsonl"), outcome={"leftovers": leftovers})],
                         [row])

    assert code("no-load/sigkill/serve", ["4242 daemon"]) == 1
    assert code("no-load/sigkill/serve", []) == 0
    assert code("no-load/sigkill/worker", ["4243 stage"]) == 0
