"""Every threshold a rule names bounds every path to a pass: a figure past its limit never prints
as a pass beside it, and a request still open at the window's end is only a hang once it has been
open longer than the limit."""
from __future__ import annotations

import pytest

from omnitrace.model.synthetic import ns
from tests.test_verify_rules import (FAULT, HARNESS, INJECTOR, SERVE, WORKERS, children_die, oom,
                                     server, sigkill_serve, verdicts)

ROW = "no-load/sigterm/serve"            # exit_s 90, observe_s 100


def sigterm_to_serve(b, end=FAULT + 100):
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.mark("scenario", 9.0, end, scenario=ROW, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario=ROW, fault_signal="SIGTERM", fault_target="serve",
           fault_pids=[SERVE])
    return b


@pytest.mark.parametrize("how", ["status 0", "re-raised"])
def test_graceful_shutdown_fails_a_clean_exit_after_exit_s(how):
    """Handler ran, shutdown completed cleanly, but 95 s after the fault with a 90 s limit."""
    b = sigterm_to_serve(server())
    children_die(b, FAULT + 90.0, reaper=SERVE, code=0)
    if how == "re-raised":                       # uvicorn's way, at the end of its shutdown
        b.signal(SERVE, SERVE, 15, FAULT + 94.999)
        b.exit(SERVE, FAULT + 95.0)
        b.reap(HARNESS, SERVE, FAULT + 95.01, sig=15)
    else:
        b.exit(SERVE, FAULT + 95.0, code=0)
        b.reap(HARNESS, SERVE, FAULT + 95.01, code=0)
    rule = verdicts(b)["graceful-shutdown"]
    assert rule.verdict == "fail" and rule.threshold == 90
    assert "exited only at +95.00 s, after the 90 s limit" in rule.evidence[0].text


def test_graceful_shutdown_fails_a_handler_that_never_finishes_within_the_window():
    """The window covers exit_s and the process is still shutting down: that is decided."""
    rule = verdicts(sigterm_to_serve(server()))["graceful-shutdown"]
    assert rule.verdict == "fail"
    assert "handler ran at +0.00 s, still running at the 90 s limit" in rule.evidence[0].text


def test_graceful_shutdown_undecided_while_the_window_ends_before_exit_s():
    rule = verdicts(sigterm_to_serve(server(), end=FAULT + 20))["graceful-shutdown"]
    assert rule.verdict == "inconclusive" and "did not exit in the window" in rule.evidence[0].text


def test_oom_request_open_at_the_window_end_is_a_hang_only_past_oom_s():
    """A speech request made under OOM 7 s before the window's end is not (yet) 120 s late."""
    b = oom(server())
    b.request(FAULT + 58.0, None, "speech")
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "inconclusive"
    assert any("still open at the window's end" in e.text for e in rule.evidence)


def test_inflight_request_open_at_the_window_end_is_a_hang_only_past_fail_fast_s():
    b = sigkill_serve(server(), end=FAULT + 10)   # fail_fast_s is 15
    b.request(FAULT - 1.0, None, "chat")
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "inconclusive"


def test_gpu_released_counts_memory_listed_again_after_a_first_release():
    """pid 102 is listed with 0 at +0.31 s, then with 0.2 GiB from +5 s to the end (a worker
    that took memory again, or a driver still holding its context): within the device's
    tolerance, so only the per-process limit sees it. No pid of the tree may hold memory then."""
    b = sigkill_serve(server())
    b.gpu_proc(0, 102, 0.2, FAULT + 5.0)
    rule = verdicts(b)["gpu-released"]
    assert rule.verdict == "fail"
    assert "pid 102" in rule.evidence[0].text and "still holds 0.20 GiB" in rule.evidence[0].text


def test_oom_request_the_client_gave_up_on_before_oom_s_is_not_a_hang():
    """A probe's 20 s client timeout under a 120 s limit: the server may still have answered."""
    b = oom(server())
    b.request(FAULT + 10.0, FAULT + 30.0, "chat", error="ReadTimeout")
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "inconclusive"
    assert any("the client gave up before the 120 s limit" in e.text for e in rule.evidence)


def test_oom_request_timed_out_past_oom_s_is_a_hang():
    b = oom(server())
    b.request(FAULT + 10.0, FAULT + 140.0, "chat", error="ReadTimeout")
    b.mark("scenario", 9.0, FAULT + 150, scenario="oom/gpu-hog", server_pid=SERVE)
    b.events = [e for e in b.events if not (e.kind == "span" and e.attributes.get(
        "omnitrace.mark") == "scenario" and e.end < ns(FAULT + 150))]
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "fail" and any(": a hang" in e.text for e in rule.evidence)


def test_inflight_request_the_client_gave_up_on_before_fail_fast_s_is_undecided():
    b = sigkill_serve(server())                   # fail_fast_s is 15
    b.request(FAULT - 1.0, FAULT + 4.0, "chat", error="ReadTimeout")
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "inconclusive"
    assert "the client gave up before the 15 s limit" in rule.evidence[0].text
