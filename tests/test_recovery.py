"""Recovery under a supervisor (omnitrace/verify/rules/recovery.py, omnitrace/inject/supervise.py).

Fast: the three rules on hand-built timelines (each outcome, the window and "before" edges, every
limit bounding a pass), the matrix key, supervisord's config and log reading. Slow: the testbed
under a real supervisord, recorded and verified (the defect orphan-keeps-device is in
tests/test_defects.py with every other defect).
"""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from omnitrace.model.build import build_model
from omnitrace.model.synthetic import TimelineBuilder
from omnitrace.timeline import read_timeline
from omnitrace.errors import OmnitraceError
from omnitrace.inject.runner import row_bound_s, run_matrix, scenario_command
from omnitrace.inject.scenario import parse
from omnitrace.inject.supervise import Supervisor, SupervisorSettings
from omnitrace.testbed.harness import is_gone, running_testbed, wait_until
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.matrix import MatrixError, load_matrix
from tests.harness import matrix_run

DRIVER, INJECTOR, SUPERVISORD, SERVE, TRACKER, NEW = 10, 20, 50, 100, 101, 200
WORKERS = {102: 0, 103: 1}
STAGE = "VLLM::StageEngineCoreProc_thinker_replica0_DP0"
FAULT = 20.0
ROW = "recovery/sigkill/serve"        # recovery_s 45, recovery_request_s 20, observe_s 70
MATRIX = load_matrix(None)
VLLM_MATRIX = os.path.join(os.path.dirname(__file__), "..", "examples", "vllm-cpu", "matrix.yaml")
SERVE_CMD = ["python3", "-m", "vllm_omni.entrypoints.cli.main", "serve", "Qwen", "--omni"]


def supervised(health_before=True) -> TimelineBuilder:
    """supervisord (forked by the driver) and the server it started, healthy and holding GPU
    memory; SIGKILL to the server at FAULT, which exits at once."""
    b = TimelineBuilder()
    b.spawn(DRIVER, 1, "python3", 0.0)
    b.spawn(INJECTOR, DRIVER, "omnitrace-inject", 0.1)
    b.spawn(SUPERVISORD, DRIVER, "supervisord", 0.5,
            cmdline=["python3", "supervisord", "--nodaemon", "--configuration", "s.conf"])
    b.spawn(SERVE, SUPERVISORD, "python3", 1.0, cmdline=SERVE_CMD, ports=[8000])
    b.spawn(TRACKER, SERVE, "python3", 1.1,
            cmdline=["python3", "-c", "from multiprocessing.resource_tracker import main;main(5)"])
    for pid, device in WORKERS.items():
        b.spawn(pid, SERVE, STAGE, 1.2)
        b.gpu_proc(device, pid, 2, 2.0)
    b.gpu(0, 2, 2.0).gpu(1, 2, 2.0)
    if health_before:
        b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 9, FAULT)
    b.exit(SERVE, FAULT + 0.001)
    b.reap(SUPERVISORD, SERVE, FAULT + 0.01, sig=9)
    return b


def old_tree_dies(b, t=FAULT + 0.2, skip=()):
    for n, pid in enumerate([TRACKER, *WORKERS]):
        if pid not in skip:
            b.exit(pid, t + 0.01 * n)
            b.reap(DRIVER, pid, t + 0.01 * n + 0.05, sig=15)
            if pid in WORKERS:
                b.gpu_proc(WORKERS[pid], pid, 0, t + 0.01 * n + 0.1)


def restarts(b, healthy_at, started_at=FAULT + 1.0, pid=NEW, first_request=(0.1, 0.6, 200)):
    """supervisord forks the new server; /health refused until `healthy_at`, then 200; the
    first request is sent `first_request[0]` s after that and answered after `[1]` s."""
    b.spawn(pid, SUPERVISORD, "python3", started_at, cmdline=SERVE_CMD, ports=[8000])
    b.health(FAULT + 0.25, healthy_at, 0.5, status=None, error="refused")
    b.health(healthy_at, healthy_at + 10, 0.5)
    if first_request:
        sent, took, status = first_request
        b.request(healthy_at + sent, healthy_at + sent + took, "chat", status=status)
    return b


def marked(b, end=FAULT + 60, row=ROW):
    b.mark("scenario", 0.2, end, scenario=row, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT + 0.001, scenario=row, fault_signal="SIGKILL",
           fault_target="serve", fault_pids=[SERVE])
    return b


def verdicts(b, end=None):
    report = verify_timeline(b.timeline(end=end), MATRIX)
    (scenario,) = report.scenarios
    return {r.id: r for r in scenario.rules}


def texts(rule) -> str:
    return " | ".join(e.text for e in rule.evidence)


# -- the three outcomes -------------------------------------------------------------------------
def test_recovered_cleanly_passes_every_rule_with_the_three_figures():
    b = supervised()
    old_tree_dies(b)
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 8.0)))
    assert {k: r.verdict for k, r in rules.items()} == dict.fromkeys(rules, "pass")
    gone, healthy, first = (rules[k] for k in ("old-incarnation-gone", "recovers-within",
                                               "first-request-recovers"))
    assert gone.measured == pytest.approx(0.22, abs=0.01) and gone.threshold == 45
    assert healthy.measured == pytest.approx(8.002, abs=0.01)
    assert healthy.summary.startswith("recovered cleanly in 8.00 s")
    assert f"pid {NEW}" in texts(healthy) and f"forked by pid {SUPERVISORD} supervisord" in texts(healthy)
    assert first.measured == pytest.approx(0.7, abs=0.01) and first.threshold == 20
    assert "fault to first success 8.70 s" in first.summary


def test_recovered_beside_the_old_engine_fails_old_incarnation_gone_naming_it():
    """vllm#55510: the old engine outlives the SIGKILLed server, holding its memory, while the
    supervisor's new server comes up beside it."""
    b = supervised()
    old_tree_dies(b, skip=(102,))
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 8.0)))
    gone = rules["old-incarnation-gone"]
    assert gone.verdict == "fail" and gone.measured is None
    assert gone.summary == ("1 process(es) of the old incarnation alive or holding GPU memory at "
                            "the new server's healthy answer at +8.00 s")
    assert f"pid 102 {STAGE}" in texts(gone) and "holding 2.00 GiB" in texts(gone)
    assert "at the new server's healthy answer at +8.00 s" in texts(gone)
    healthy = rules["recovers-within"]
    assert healthy.summary == ("recovered while 1 process(es) of the old incarnation were still "
                               "alive or holding GPU memory beside it (old-incarnation-gone) in "
                               "8.00 s")
    assert rules["first-request-recovers"].verdict == "pass"


def test_memory_the_old_incarnation_still_holds_after_its_exit_is_not_gone():
    """The old stage exited, but the device still charges its pid when the new server is healthy
    (a release that lags the exit, as a forked child keeps a CUDA context)."""
    b = supervised()
    old_tree_dies(b, skip=(102,))
    b.exit(102, FAULT + 0.3)
    b.gpu_proc(0, 102, 0, FAULT + 9.0)
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 8.0)))
    gone = rules["old-incarnation-gone"]
    assert gone.verdict == "fail" and "holding GPU memory at" in gone.summary
    assert "not gone at the new server's healthy answer at +8.00 s, holding 2.00 GiB" in texts(gone)
    assert "were still holding GPU memory beside it" in rules["recovers-within"].summary


def failed_starts(b, pids=(200, 201, 202)) -> None:
    """supervisord starts a new server every 4 s from +1 s; each exits 3 two seconds later."""
    for n, pid in enumerate(pids):
        b.spawn(pid, SUPERVISORD, "python3", FAULT + 1 + 4 * n, cmdline=SERVE_CMD)
        b.exit(pid, FAULT + 3 + 4 * n, code=3)


def test_could_not_recover_names_each_failed_start():
    b = supervised()
    old_tree_dies(b, skip=(102,))
    failed_starts(b)
    b.health(FAULT + 0.25, FAULT + 60, 0.5, status=None, error="refused")
    rules = verdicts(marked(b))
    healthy = rules["recovers-within"]
    assert healthy.verdict == "fail" and healthy.measured is None
    assert healthy.summary == ("could not recover: pid 50 supervisord started 3 new server(s) "
                               "after the fault; none reported healthy; the last exited at "
                               "+11.00 s and none was forked after it")
    assert "pid 202" in texts(healthy) and "(status 3)" in texts(healthy)
    gone = rules["old-incarnation-gone"]
    assert gone.verdict == "fail" and "at the 45 s recovery limit" in texts(gone)
    assert rules["first-request-recovers"].verdict == "inconclusive"


def test_a_parent_that_restarts_nothing_cannot_recover():
    b = supervised()
    old_tree_dies(b)
    b.health(FAULT + 0.25, FAULT + 60, 0.5, status=None, error="refused")
    healthy = verdicts(marked(b))["recovers-within"]
    assert healthy.verdict == "fail"
    assert "its parent pid 50 supervisord forked no new server after the fault" in healthy.summary


# -- limits and the window ----------------------------------------------------------------------
def test_healthy_after_recovery_s_fails():
    b = supervised()
    old_tree_dies(b)
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 50.0)))
    assert rules["recovers-within"].verdict == "fail"
    assert rules["recovers-within"].summary == "recovered only at +50.00 s, after the limit"


def test_the_old_incarnation_must_be_gone_by_the_limit_when_no_new_server_is_healthy():
    """The old tree leaves at +48 s, after the 45 s limit, and no restart came: fail, not pass."""
    b = supervised()
    old_tree_dies(b, t=FAULT + 48)
    b.health(FAULT + 0.25, FAULT + 60, 0.5, status=None, error="refused")
    assert verdicts(marked(b))["old-incarnation-gone"].verdict == "fail"


def test_a_window_that_ends_before_the_limit_without_recovery_decides_nothing():
    b = supervised()
    old_tree_dies(b)
    b.health(FAULT + 0.25, FAULT + 30, 0.5, status=None, error="refused")
    rules = verdicts(marked(b, end=FAULT + 30))
    assert {k: rules[k].verdict for k in ("old-incarnation-gone", "recovers-within",
                                           "first-request-recovers")} == dict.fromkeys(
        ("old-incarnation-gone", "recovers-within", "first-request-recovers"), "inconclusive")


def blocked_restart(cleanup: bool):
    """For tests/test_verify_window.py too: no recovery within the 45 s limit, the window ends at
    +50 s with the old stage alive; after it, the clean-up stops the stage and a late restart
    answers 200. The verdicts must not change with what came after the window."""
    b = supervised()
    old_tree_dies(b, skip=(102,))
    failed_starts(b)
    b.health(FAULT + 0.25, FAULT + 50, 0.5, status=None, error="refused")
    if cleanup:
        b.signal(DRIVER, 102, 15, FAULT + 50.5)
        b.exit(102, FAULT + 50.6)
        b.gpu_proc(0, 102, 0, FAULT + 50.7)
        restarts(b, healthy_at=FAULT + 52, started_at=FAULT + 51, pid=203)
    return marked(b, end=FAULT + 50)


def test_what_came_after_the_window_changes_no_recovery_verdict():
    decided = [{k: (r.verdict, r.measured, r.summary) for k, r in verdicts(blocked_restart(c)).items()}
               for c in (False, True)]
    assert decided[0] == decided[1]
    assert decided[0]["recovers-within"][0] == "fail"


def test_a_healthy_answer_after_the_window_is_not_a_recovery():
    """The window is the law: the new server's 200 at +35 s, after a window ending at +30 s."""
    b = supervised()
    old_tree_dies(b)
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 35.0), end=FAULT + 30))
    assert rules["recovers-within"].verdict == "inconclusive"


@pytest.mark.parametrize("end, verdict", [(FAULT + 20, "inconclusive"), (FAULT + 60, "fail")])
def test_a_first_request_open_at_the_window_end_is_late_only_past_its_limit(end, verdict):
    """Limit: 20 s after the healthy answer at +8 s."""
    b = supervised()
    old_tree_dies(b)
    restarts(b, healthy_at=FAULT + 8.0, first_request=None)
    b.request(FAULT + 8.1, None, "chat")
    assert verdicts(marked(b, end=end))["first-request-recovers"].verdict == verdict


@pytest.mark.parametrize("first_request, summary", [
    ((0.1, 0.3, 500), "the first request after recovery failed: HTTP 500"),
    ((0.1, 25.0, 200), "succeeded only at +33.10 s, after the limit"),
])
def test_a_first_request_that_fails_or_is_late_fails(first_request, summary):
    b = supervised()
    old_tree_dies(b)
    rule = verdicts(marked(restarts(b, healthy_at=FAULT + 8.0, first_request=first_request)))[
        "first-request-recovers"]
    assert rule.verdict == "fail" and summary in rule.summary


# -- "before", and which server answered --------------------------------------------------------
def test_recovered_needs_a_healthy_before():
    b = supervised(health_before=False)
    old_tree_dies(b)
    rules = verdicts(marked(restarts(b, healthy_at=FAULT + 8.0)))
    assert rules["recovers-within"].verdict == "inconclusive"
    assert "no 2xx answer from the server before the fault" in rules["recovers-within"].summary


def test_a_200_from_the_old_server_still_shutting_down_is_not_a_recovery():
    """SIGTERM: the old server answers 200 until it exits at +2 s; nothing restarts it."""
    b = supervised()
    b.events = [e for e in b.events if not (e.kind in ("exit", "reap") and e.pid == SERVE)]
    b.health(FAULT, FAULT + 2.0, 0.5)
    b.exit(SERVE, FAULT + 2.0)
    old_tree_dies(b, t=FAULT + 1.5)
    b.health(FAULT + 2.1, FAULT + 60, 0.5, status=None, error="refused")
    assert verdicts(marked(b))["recovers-within"].verdict == "fail"


def test_without_health_probes_the_first_2xx_request_is_the_healthy_answer():
    """--health-rate 0: the driver asks with chat requests; the one after the first 2xx is the
    first request after recovery."""
    b = supervised()
    old_tree_dies(b)
    b.spawn(NEW, SUPERVISORD, "python3", FAULT + 1.0, cmdline=SERVE_CMD, ports=[8000])
    for n in range(6):
        b.request(FAULT + 1 + n, FAULT + 1.01 + n, "chat", error="refused")
    b.request(FAULT + 7, FAULT + 7.5, "chat", status=200)
    b.request(FAULT + 7.6, FAULT + 8.0, "chat", status=200)
    rules = verdicts(marked(b))
    assert rules["recovers-within"].measured == pytest.approx(7.5, abs=0.01)
    assert rules["first-request-recovers"].verdict == "pass"
    assert rules["first-request-recovers"].measured == pytest.approx(0.5, abs=0.01)


# -- the matrix key and supervisord -------------------------------------------------------------
def test_the_recovery_rows_are_supervised_and_appended_beyond_the_seed():
    rows = [r for r in MATRIX.rows if r.supervise is not None]
    assert [r.id for r in rows] == ["recovery/sigkill/serve", "recovery/sigterm/serve"]
    assert MATRIX.rows[-2:] == rows and all("vllm#55510" in r.issues for r in rows)
    assert all("Beyond the seed document" in r.behaviour for r in rows)


@pytest.mark.parametrize("value, where, what", [
    ("{startsecs: -1}", "rows[0].supervise.startsecs", "must be a number >= 0"),
    ("{startretries: 1.5}", "rows[0].supervise.startretries", "must be an integer >= 0"),
    ("{restarts: 3}", "rows[0].supervise.restarts", "unknown key"),
    ("often", "rows[0].supervise", "must be a mapping"),
])
def test_bad_supervise_settings_are_one_line_errors(tmp_path, value, where, what):
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: vllm-omni\nrows:\n  - id: {ROW}\n    supervise: {value}\n")
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert str(err.value).startswith(f"{path}:4: {where}: {what}")


def test_a_supervised_row_reaches_the_driver_with_its_settings_and_limit(tmp_path):
    """The runner passes the row's supervise settings and recovery_s; the driver parses them."""
    row = load_matrix(VLLM_MATRIX).row(ROW)
    argv = scenario_command(row, "serve {port}", 8000, "http://127.0.0.1:8000", tmp_path / "o.json",
                            [], tmp_path / "t.jsonl")
    driver = argv[argv.index("omnitrace.inject.scenario") + 1:]
    plan, _ = parse(driver)
    assert plan.supervise == SupervisorSettings(startsecs=90, startretries=1)
    assert plan.recovery_s == 400
    assert parse(driver[:driver.index("--supervise")])[0].supervise is None
    assert row_bound_s(row, 400) == 400 + 90 + 460 + 60


def test_supervisord_config_restarts_always_and_quotes_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sup = Supervisor(["scripts/serve.sh", "--port", "8000", "--title", "50% of it"],
                     SupervisorSettings(startsecs=90, startretries=1))
    try:
        conf = sup.conf.read_text()
        assert f'command={tmp_path}/scripts/serve.sh --port 8000 --title "50%% of it"' in conf
        for line in ("autorestart=true", "startsecs=90", "startretries=1", "nodaemon=true"):
            assert line in conf.splitlines()
    finally:
        sup.close()
    assert not sup.dir.exists()


def test_supervisord_state_is_read_from_its_log_lines_as_they_complete():
    sup = Supervisor(["server"])
    try:
        with open(sup.log, "w") as log:
            log.write("2026-12-05 12:13:05,896 INFO spawned: 'server' with pid 13972\n"
                      "2026-12-05 12:13:14,176 INFO success: server entered RUNNING state, proc")
        state = sup.state()
        assert (state.spawned, state.running, state.current) == ([13972], 0, 13972)
        with open(sup.log, "a") as log:
            log.write("ess has stayed up for > than 10 seconds (startsecs)\n"
                      "2026-12-05 12:13:14,176 INFO gave up: server entered FATAL state, too many\n")
        state = sup.state()
        assert state.running == 1 and state.fatal
    finally:
        sup.close()


def test_no_supervisord_is_a_one_line_error_before_any_row_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OmnitraceError, match=r"pip install 'omnitrace\[supervise\]'"):
        run_matrix(MATRIX, None, None, "recovery/*", str(tmp_path / "out"), [])
    assert not (tmp_path / "out").exists()


# -- the testbed's defect, directly -------------------------------------------------------------
def test_orphan_keeps_device_blocks_a_second_server(tmp_path):
    """Its stage 0 keeps 85 % of GPU 0 after the server is SIGKILLed: the same server started
    again on the same device (what a supervisor does) cannot start, its log names the OOM."""
    args = ["--defect", "orphan-keeps-device"]
    with running_testbed(args, sim_dir=tmp_path / "gpu") as tb:
        os.kill(tb.pid, signal.SIGKILL)
        assert wait_until(lambda: is_gone(tb.pid), 10) is not None
        with pytest.raises(RuntimeError, match="Stage 0 could not allocate its memory at start"):
            with running_testbed(args, sim_dir=tmp_path / "gpu"):
                pass
        assert not any(is_gone(pid) for pid in tb.stage_pids)


# -- real runs: the testbed under supervisord ---------------------------------------------------
SHORT = os.path.join(os.path.dirname(__file__), "data", "short-windows.yaml")


def run_rows(tmp_path, *args):
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu")}
    cli, report = matrix_run(tmp_path / "run", "--matrix", SHORT, *args, env=env, timeout=400)
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-3000:]
    return cli, report


@pytest.mark.slow
def test_the_correct_testbed_recovers_under_supervisord(tmp_path):
    cli, report = run_rows(tmp_path, "--scenarios", "recovery/*")
    assert cli.returncode == 0, cli.stdout[-4000:]
    assert [s["id"] for s in report["scenarios"]] == ["recovery/sigkill/serve",
                                                      "recovery/sigterm/serve"]
    for scenario in report["scenarios"]:
        rules = {r["id"]: r for r in scenario["rules"]}
        assert all(r["verdict"] == "pass" for r in rules.values()), cli.stdout[-4000:]
        assert rules["recovers-within"]["summary"].startswith("recovered cleanly")
        new = rules["recovers-within"]["evidence"][-1]["pid"]
        assert new != scenario["server_pid"]     # a new incarnation answered, not the old one
    log = (tmp_path / "run" / "recovery_sigkill_serve.log").read_text()
    assert "success: server entered RUNNING state" in log and "leftover" not in cli.stdout


@pytest.mark.slow
def test_at_health_rate_0_nothing_asks_health_and_chat_requests_tell_the_recovery(tmp_path):
    cli, report = run_rows(tmp_path, "--scenarios", ROW, "--health-rate", "0")
    (scenario,) = report["scenarios"]
    assert all(r["verdict"] == "pass" for r in scenario["rules"]), cli.stdout[-4000:]
    run = tmp_path / "run"
    kinds = {r.kind for r in build_model(read_timeline(run / "recovery_sigkill_serve.jsonl")).requests}
    assert "health" not in kinds and "chat" in kinds
    # the driver's own /health polls are not recorded: its outcome shows it asked with chat
    # requests instead, at least one until the new server answered, then the first request
    probes = json.loads((run / "recovery_sigkill_serve.outcome.json").read_text())["probes"]
    assert len(probes) >= 2 and all(p.startswith("chat:") for p in probes), probes
