"""The corpus's truth rules (tests/corpus/verdicts.py) on hand-made measurements: each reading of a
claim that docs/corpus.md states, without starting a server."""
from __future__ import annotations

from tests.corpus import spec
from tests.corpus.verdicts import derive

ROWS, PATTERNS = spec.load()
ROOT, WORKER = 100, 101
WORKER_CMD = "python -c from multiprocessing.spawn import spawn_main"


def member(pid, exit_t, ppid=1, cmdline="python -m server", seen_t=-1.0):
    return {"pid": pid, "start": 1.0, "ppid": ppid, "cmdline": cmdline, "seen_t": seen_t,
            "exit_t": exit_t}


def health(start, status, ended="completed"):
    return {"kind": "health", "start": start, "end": start + 0.01, "status": status,
            "ended": ended, "first_byte": None}


def measured(members, exchanges, targets=(ROOT,), window=6.0, alive=(), zombies=(),
             dispositions=None, root_status=None):
    return {"root": ROOT, "targets": list(targets), "members": members, "exchanges": exchanges,
            "window_s": window, "checkpoint_alive": list(alive), "checkpoint_zombies": list(zombies),
            "dispositions": dispositions or {str(t): "caught" for t in targets},
            "root_status": root_status}


def verdicts(row, m):
    return {rule: fact["verdict"] for rule, fact in derive(m, ROWS[row], PATTERNS).items()}


def test_health_that_turns_200_again_fails_service_unavailable():
    m = measured([member(ROOT, None), member(WORKER, 0.01, ROOT, WORKER_CMD)],
                 [health(-0.5, 200), health(0.1, 503), health(3.0, 200)], targets=[WORKER])
    assert verdicts("no-load/sigkill/worker", m)["service-unavailable"] == "fail"


def test_unavailable_without_a_2xx_before_the_fault_is_not_applicable():
    m = measured([member(ROOT, 0.01)], [health(0.1, None, "refused")])
    assert verdicts("no-load/sigkill/serve", m)["service-unavailable"] == "n/a"


def test_a_survivor_at_the_checkpoint_fails_no_residue_and_cleanup_order():
    orphan = member(WORKER, None, ROOT, WORKER_CMD)
    m = measured([member(ROOT, 0.01), orphan], [health(-0.5, 200), health(0.1, None, "refused")],
                 alive=[WORKER], root_status={"signal": 9})
    got = verdicts("no-load/sigkill/serve", m)
    assert (got["no-residue"], got["cleanup-order"], got["target-exits"]) == ("fail", "fail", "pass")
    assert got["gpu-released"] == "n/a"


def test_a_clean_exit_after_exit_s_fails_graceful_shutdown():
    m = measured([member(ROOT, 4.8), member(WORKER, 0.1, ROOT, WORKER_CMD)],
                 [health(-0.5, 200), health(0.1, None, "refused")], root_status={"exit": 0})
    got = verdicts("no-load/sigterm/serve", m)
    assert (got["graceful-shutdown"], got["target-exits"], got["cleanup-order"]) == ("fail", "fail", "pass")


def test_an_ignored_sigterm_is_no_graceful_shutdown():
    m = measured([member(ROOT, None)], [health(-0.5, 200)], alive=[ROOT],
                 dispositions={str(ROOT): "ignored"})
    got = verdicts("no-load/sigterm/serve", m)
    assert (got["graceful-shutdown"], got["cleanup-order"], got["stop-accepting"]) == ("fail", "fail", "n/a")


def test_a_zombie_left_at_the_checkpoint_fails_no_zombies():
    m = measured([member(ROOT, None), member(WORKER, 0.01, ROOT, WORKER_CMD)],
                 [health(-0.5, 200), health(0.1, 503)], targets=[WORKER], zombies=[WORKER])
    assert verdicts("no-load/sigkill/worker", m)["no-zombies"] == "fail"


def test_inflight_requests_still_open_at_the_window_end_fail_and_none_open_is_not_applicable():
    stream = {"kind": "chat-stream", "start": -0.3, "end": None, "status": 200, "ended": None,
              "first_byte": -0.2}
    base = [member(ROOT, None), member(WORKER, 0.01, ROOT, WORKER_CMD)]
    hung = measured(base, [health(-0.5, 200), health(0.1, 503), stream], targets=[WORKER])
    idle = measured(base, [health(-0.5, 200), health(0.1, 503)], targets=[WORKER])
    assert verdicts("under-load/sigkill/worker", hung)["inflight-fail-fast"] == "fail"
    assert verdicts("under-load/sigkill/worker", idle)["inflight-fail-fast"] == "n/a"
