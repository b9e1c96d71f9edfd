"""The before rule: a rule that claims a change must have seen the state before the fault
(docs/verify.md). Without a 2xx from the server before the fault, no rule about its service
passes; without GPU memory held by its tree at the fault, no rule about its GPU memory does.
Each is inconclusive, saying what is missing."""
from __future__ import annotations

import pytest

from omnitrace.model.synthetic import TimelineBuilder, ns
from tests.test_verify_rules import (FAULT, HARNESS, SERVE, oom, server, sigkill_serve,
                                     sigterm_serve, verdicts)

NO_2XX = "no 2xx answer from the server before the fault"
NO_GPU = "the server's tree held no GPU memory before the fault"


def wrong_port(b):
    """Every probe was refused, before the fault as after it: the prober never reached it."""
    b.events = [e for e in b.events if not (e.kind == "span" and e.attributes.get("url.path"))]
    b.health(3.0, 60.0, 0.5, status=None, error="refused")
    return b


def cpu_server() -> TimelineBuilder:
    """The server of tests.test_verify_rules on a machine whose (simulated) GPUs it never uses."""
    return server(holds_gpu=False)


def test_service_unavailable_needs_a_2xx_before_the_fault():
    rule = verdicts(wrong_port(sigkill_serve(server())))["service-unavailable"]
    assert rule.verdict == "inconclusive" and rule.summary.startswith(NO_2XX)


def test_stop_accepting_needs_a_2xx_before_the_fault():
    rule = verdicts(wrong_port(sigterm_serve(server())))["stop-accepting"]
    assert rule.verdict == "inconclusive" and rule.summary.startswith(NO_2XX)


def test_inflight_fail_fast_needs_the_server_serving_before_the_fault():
    """Already broken before the fault (every answer 503): its in-flight request failing proves
    nothing about the fault."""
    b = sigkill_serve(server())
    b.events = [e for e in b.events if not (e.kind == "span" and e.attributes.get("url.path"))]
    b.health(3.0, FAULT, 0.5, status=503)
    b.request(FAULT - 1.0, FAULT + 0.01, "chat", error="reset")
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "inconclusive" and rule.summary.startswith(NO_2XX)


def test_a_2xx_from_before_the_server_started_is_not_its_before():
    """A 200 from a previous server on the same port, before this one was forked."""
    b = wrong_port(sigkill_serve(server()))
    b.request(0.2, 0.3, "health", status=200)
    rule = verdicts(b)["service-unavailable"]
    assert rule.verdict == "inconclusive" and rule.summary.startswith(NO_2XX)


def test_a_pass_cites_its_before_first():
    rule = verdicts(sigkill_serve(server()))["service-unavailable"]
    assert rule.verdict == "pass"
    assert rule.evidence[0].text == "before the fault: GET /health (health) answered HTTP 200 at -0.50 s"


def test_gpu_released_on_a_server_that_never_held_gpu_memory_is_inconclusive():
    rule = verdicts(sigkill_serve(cpu_server()))["gpu-released"]
    assert rule.verdict == "inconclusive"
    assert rule.summary == f"{NO_GPU}: nothing to release"


def test_gpu_released_without_process_lists_takes_the_before_from_the_device():
    """A driver that lists no pids (NVML in a container): the device stood above its level when
    the server started, so the tree held memory and its release can be measured."""
    b = sigkill_serve(server())
    b.events = [e for e in b.events if e.kind != "gpu_process"]
    rule = verdicts(b)["gpu-released"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.4, abs=0.001)
    assert rule.evidence[0].text.startswith("GPU 0 at 20.50 GiB at the fault")


def test_oom_contract_on_a_server_that_held_no_gpu_memory_is_inconclusive():
    """Real vLLM on a CPU machine: the hog fills a simulated device the server never used, and
    the server keeps answering 200. Neither a pass nor a fail: the fault did not reach it."""
    b = cpu_server()
    b.spawn(300, HARNESS, "python3", FAULT, cmdline=["python3", "-m", "omnitrace.inject.oom_hog"])
    b.gpu_proc(0, 300, 79, FAULT + 0.5)
    b.health(3.0, FAULT + 60, 0.5)
    b.request(FAULT + 2.0, FAULT + 3.0, "chat", status=200)
    b.exit(300, FAULT + 60)
    b.mark("scenario", 9.0, FAULT + 65, scenario="oom/gpu-hog", server_pid=SERVE)
    b.mark("oom", FAULT, FAULT + 60, scenario="oom/gpu-hog", oom_pids=[300])
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "inconclusive"
    assert rule.summary == f"{NO_GPU}: the hog took memory the server does not use"


def test_oom_contract_needs_a_2xx_before_the_hog():
    b = oom(server())
    b.events = [e for e in b.events if not (e.kind == "span" and e.attributes.get("url.path")
                                            and e.t < ns(FAULT))]
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "inconclusive" and rule.summary.startswith(NO_2XX)


@pytest.mark.parametrize("fault", [sigkill_serve, sigterm_serve])
def test_no_rule_about_service_or_gpu_passes_without_a_before(fault):
    """The server never answered a 2xx and never held GPU memory: only rules about its processes
    may pass."""
    rules = verdicts(wrong_port(fault(cpu_server())))
    about_processes = {"target-exits", "graceful-shutdown", "cleanup-order", "no-residue",
                       "no-zombies"}
    passed = {rule_id for rule_id, r in rules.items() if r.verdict == "pass"}
    assert passed <= about_processes and passed
    assert {r.verdict for rule_id, r in rules.items() if rule_id not in about_processes} == {
        "inconclusive"}
