"""The window rule: nothing after a scenario's window decides a verdict (docs/verify.md).

The matrix runner cleans up after the window (SIGTERM, then SIGKILL, to whatever is left); those
exits, reaps, signals, late answers and GPU samples are not the fault's outcome. Each recording
here is built twice: stopping at the window's end, and going on with a clean-up that would flip
verdicts if it were read. Every rule must give the same verdict and figure for both.
"""
from __future__ import annotations

import pytest

from omnitrace.model.build import build_model
from omnitrace.model.scenarios import find_scenarios
from omnitrace.model.window import Window
from omnitrace.verify.matrix import load_matrix
from tests.test_recovery import blocked_restart
from tests.test_verify_rules import (FAULT, HARNESS, INJECTOR, SERVE, STAGE, TRACKER, WORKERS,
                                     gpu_back, server, sigkill_serve, sigterm_serve, verdicts)

HOG = 300


def _cleanup(b, end, pids, reaper=SERVE):
    """The runner's clean-up after the window: SIGTERM, each exits 0 and is reaped, memory back."""
    t = end + 0.5
    for n, pid in enumerate(pids):
        b.signal(HARNESS, pid, 15, t + 0.01 * n, disposition="handler")
        b.exit(pid, t + 0.5 + 0.01 * n, code=0)
        b.reap(HARNESS if pid == SERVE else reaper, pid, t + 0.51 + 0.01 * n, code=0)
        if pid in WORKERS:
            b.gpu_proc(WORKERS[pid], pid, 0, t + 0.6)
    gpu_back(b, t + 0.7)


def hung_sigterm(cleanup: bool):
    """SIGTERM's handler runs but nothing exits in the window; a chat started late is answered
    only after it."""
    end = FAULT + 100
    b = server()
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.health(FAULT + 0.25, end, 0.5, status=503)
    b.request(end - 1.0, end + 1.0 if cleanup else None, "chat", status=200 if cleanup else None)
    b.mark("scenario", 9.0, end, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    if cleanup:
        _cleanup(b, end, [*WORKERS, TRACKER, SERVE])   # workers first: the "right" order
        b.health(end + 3.0, end + 5.0, 0.5, status=None, error="refused")
    return b


def orphan_after_sigkill(cleanup: bool):
    """A stage survives its killed server; a probe sent at the window's end is answered 200 later."""
    b = sigkill_serve(server(), orphan=True)
    b.request(44.99, 45.5 if cleanup else None, "health", status=200 if cleanup else None)
    if cleanup:
        _cleanup(b, 45.0, [102], reaper=1)
    return b


def oom_hog_outlives_the_window(cleanup: bool):
    """The hog still runs at the window's end; a speech request open then is answered later."""
    end = FAULT + 30
    b = server()
    b.spawn(HOG, HARNESS, "python3", FAULT, cmdline=["python3", "-m", "omnitrace.inject.oom_hog"])
    b.gpu_proc(0, HOG, 59, FAULT + 0.5)
    b.health(3.0, FAULT + 1.0, 0.5)
    b.health(FAULT + 1.0, end, 0.5, status=503)
    b.request(FAULT + 2.0, FAULT + 3.0, "chat", status=503, openai=True)
    b.request(end - 1.0, end + 1.0 if cleanup else None, "speech",
              status=503 if cleanup else None, openai=True if cleanup else None)
    b.mark("scenario", 9.0, end, scenario="oom/gpu-hog", server_pid=SERVE)
    b.mark("oom", FAULT, end, scenario="oom/gpu-hog", oom_pids=[HOG])
    if cleanup:
        b.exit(HOG, end + 0.2)
        _cleanup(b, end, [*WORKERS, TRACKER, SERVE])
    return b


def inflight_answered_after_the_window(cleanup: bool):
    """Under load: a chat open at the fault is cut only after the window."""
    b = sigkill_serve(server(), end=40.0)
    b.request(FAULT - 1.0, 41.0 if cleanup else None, "chat", error="reset" if cleanup else None)
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    return b


def input_answered_after_the_window(cleanup: bool):
    """An abnormal request and the recovery after it are still open at the window's end; after
    it they are answered 500 and 503, /health turns 503 and the clean-up stops the tree."""
    row, end = "abnormal-input/malformed-json", FAULT + 4
    b = server()
    b.health(3.0, end, 0.5)
    b.request(FAULT - 1.0, FAULT - 0.9, "chat", status=200)
    b.mark("scenario", 9.0, end, scenario=row, server_pid=SERVE)
    b.mark("input", FAULT, FAULT + 0.01, scenario=row, server_pid=SERVE,
           input_variant="malformed-json")
    late = end + 0.3 if cleanup else None
    b.request(FAULT + 0.001, late, "input", status=500 if cleanup else None,
              attrs={"omnitrace.input.variant": "malformed-json"})
    b.request(FAULT + 0.5, late, "chat", status=503 if cleanup else None)
    if cleanup:
        b.health(end + 0.1, end + 2.0, 0.5, status=503)
        _cleanup(b, end, [SERVE, TRACKER, *WORKERS])
    return b


RECORDINGS = [hung_sigterm, orphan_after_sigkill, oom_hog_outlives_the_window,
              inflight_answered_after_the_window, input_answered_after_the_window]
RECORDINGS.append(blocked_restart)   # the recovery rules (tests/test_recovery.py)


def _decided(b):
    return {rule_id: (r.verdict, r.measured, r.summary) for rule_id, r in verdicts(b).items()}


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda f: f.__name__)
def test_no_rule_reads_past_the_window(recording):
    assert _decided(recording(cleanup=True)) == _decided(recording(cleanup=False))


def test_every_rule_is_exercised_by_the_window_recordings():
    checked = {rule for recording in RECORDINGS for rule in verdicts(recording(cleanup=False))}
    assert checked == {rule for row in load_matrix(None).rows for rule in row.rules}


def test_graceful_shutdown_does_not_take_the_cleanups_exit_for_the_faults():
    """The server ran its handler but never exited in the window; the runner's clean-up made it
    exit 0 later. That is not a graceful shutdown, and the evidence says when it really went."""
    rule = verdicts(hung_sigterm(cleanup=True))["graceful-shutdown"]
    assert rule.verdict != "pass"
    assert "after the window" in rule.evidence[0].text


def test_cleanup_order_does_not_read_the_cleanups_kill_order():
    rule = verdicts(hung_sigterm(cleanup=True))["cleanup-order"]
    assert rule.verdict == "inconclusive" and "did not exit in the window" in rule.summary


def test_a_survivor_is_alive_at_the_window_end_and_its_later_exit_is_only_context():
    rule = verdicts(orphan_after_sigkill(cleanup=True))["no-residue"]
    assert rule.verdict == "fail" and rule.measured == pytest.approx(35.0)
    assert rule.evidence[0].text.endswith(
        "still alive at scenario end +35.00 s; exited at +36.00 s (status 0), after the window")


def test_the_window_view_cuts_exits_reaps_signals_answers_and_gpu_samples():
    timeline = hung_sigterm(cleanup=True).timeline()
    model = build_model(timeline)
    (scenario,) = find_scenarios(model, load_matrix(None).patterns)
    window = Window(model, scenario)
    serve = window.scenario.server
    assert serve.exit_t is None and serve.reap_t is None and serve.exit_status() == (None, None)
    assert [r.signal for r in serve.signals] == [15]               # the clean-up's is cut
    assert window.original(serve).exit_t is not None               # the recording keeps it
    (late_chat,) = [r for r in window.model.requests if r.kind == "chat"]
    assert late_chat.end is None and not late_chat.succeeded
    assert list(window.model.gpu.devices[0].samples_after(scenario.end - 1)) == []
    assert list(model.gpu.devices[0].samples_after(scenario.end - 1))     # the recording's are kept
    assert window.model.t_end == scenario.end
    assert window.model.first_after("exit", scenario.end - 1) is None


def test_no_zombies_decides_a_settled_worker_row_from_the_window():
    """A worker row that settled early: the killed stage was reaped in the window; the server and
    the other stages rightly run on, and only the runner's clean-up ends them. Before the window
    rule, that clean-up's reaps made this pass; now what the window shows does."""
    row = "no-load/sigkill/worker"                    # residue_s 30
    b = server()
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, 102, 9, FAULT)
    b.exit(102, FAULT + 0.001)
    b.reap(SERVE, 102, FAULT + 0.05, sig=9)
    b.health(FAULT + 0.25, FAULT + 8.0, 0.5, status=503)
    b.mark("scenario", 9.0, FAULT + 8.0, scenario=row, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario=row, fault_signal="SIGKILL", fault_target="worker",
           fault_pids=[102])
    _cleanup(b, FAULT + 8.0, [103, 104, TRACKER, SERVE])
    rule = verdicts(b)["no-zombies"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.05)
    assert "4 process(es) of the tree still running at scenario end +8.00 s" in rule.evidence[1].text


def test_a_zombie_reaped_only_by_the_cleanup_says_so():
    """Exited in the window, unreaped at its end (window past the limit), reaped by the clean-up."""
    b = orphan_after_sigkill(cleanup=False)
    b.exit(102, 40.0)                              # +30 s, at the limit; nobody reaps it
    b.reap(HARNESS, 102, 46.0)                      # the clean-up, after the window
    rule = verdicts(b)["no-zombies"]
    assert rule.verdict == "fail"
    assert rule.evidence[0].text.endswith("its parent pid 1 had not reaped it by scenario end "
                                          "+35.00 s; reaped at +36.00 s, after the window")


def test_a_zombie_names_the_parent_that_failed_to_reap_it():
    rule = verdicts(sigterm_serve(server(), unreaped=(103,)))["no-zombies"]
    assert rule.evidence[0].text == (
        f"pid 103 {STAGE} exited at +2.00 s; its parent pid {SERVE} python3 -m "
        "vllm_omni.entrypoints.cli.main serve Qwen --omni never reaped it")
