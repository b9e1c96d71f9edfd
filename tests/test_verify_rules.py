"""Each rule on hand-built timelines: a pass, a fail and an inconclusive case."""
from __future__ import annotations

import pytest

from omnitrace.events import Span
from omnitrace.model import build_model
from omnitrace.model.synthetic import TimelineBuilder, ns
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.matrix import load_matrix

HARNESS, INJECTOR, SERVE, TRACKER = 10, 20, 100, 101
WORKERS = {102: 0, 103: 1, 104: 1}          # pid -> GPU device
STAGE = "VLLM::StageEngineCoreProc_noid_replica0_DP0"
FAULT = 10.0
MATRIX = load_matrix(None)


def server(sources=("kernel", "procfs", "gpu", "http"), holds_gpu=True) -> TimelineBuilder:
    """A 3-stage vllm-omni-like server started at 1 s, healthy and holding GPU memory by 2 s
    (holds_gpu=False: the GPUs are sampled, flat, and no process of its tree uses them)."""
    b = TimelineBuilder(sources)
    b.spawn(HARNESS, 1, "pytest", -1.0)
    b.gpu(0, 0.5, 0.0).gpu(1, 0.5, 0.0)
    b.spawn(SERVE, HARNESS, "python3", 1.0, ports=[8000],
            cmdline=["python3", "-m", "vllm_omni.entrypoints.cli.main", "serve", "Qwen", "--omni"])
    b.spawn(TRACKER, SERVE, "python3", 1.1,
            cmdline=["python3", "-c", "from multiprocessing.resource_tracker import main;main(57)"])
    for pid, device in WORKERS.items():
        b.spawn(pid, SERVE, STAGE, 1.2)
        if holds_gpu:
            b.gpu_proc(device, pid, 20, 2.0)
    if holds_gpu:
        b.gpu(0, 20.5, 2.0).gpu(1, 40.5, 2.0)
    b.spawn(INJECTOR, HARNESS, "pytest-injector", 0.5)
    return b


def children_die(b, t, reaper, sig=None, code=None, skip=()):
    """Every child of the server exits at t (+ a little each) and is reaped by `reaper`."""
    for n, pid in enumerate([TRACKER, *WORKERS]):
        if pid in skip:
            continue
        b.exit(pid, t + 0.01 * n, code)
        if reaper:
            b.reap(reaper, pid, t + 0.01 * n + 0.05, code=code, sig=sig)
        if pid in WORKERS:
            b.gpu_proc(WORKERS[pid], pid, 0, t + 0.01 * n + 0.1)


def gpu_back(b, t):
    b.gpu(0, 0.5, t).gpu(1, 0.5, t)


def sigkill_serve(b, orphan=False, end=45.0, reaper=1):
    """SIGKILL to the serve root; workers follow by parent-death handling unless `orphan`;
    `reaper` (init by default) collects them, none when None."""
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 9, FAULT)
    b.exit(SERVE, FAULT + 0.001)
    b.reap(HARNESS, SERVE, FAULT + 0.01, sig=9)
    children_die(b, FAULT + 0.2, reaper=reaper, sig=15, skip=(102,) if orphan else ())
    if orphan:
        b.snapshot(102, 1, FAULT + 1.0)     # procfs confirms the re-parenting to init
        b.gpu(0, 20.5, FAULT + 0.5).gpu(1, 0.5, FAULT + 0.5)
    else:
        gpu_back(b, FAULT + 0.4)
    b.health(FAULT + 0.25, end, 0.5, status=None, error="refused")
    b.mark("scenario", 9.0, end, scenario="no-load/sigkill/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT + 0.001, scenario="no-load/sigkill/serve", fault_signal="SIGKILL",
           fault_target="serve", fault_pids=[SERVE])
    return b


def sigterm_serve(b, workers_after=False, disposition="handler", code=0, end=105.0,
                  row="no-load/sigterm/serve", unreaped=()):
    """SIGTERM to the serve root; it stops its workers (SIGTERM, handler, 143) and exits."""
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition=disposition)
    server_exit = FAULT + 4.0
    for n, pid in enumerate(WORKERS):
        t = FAULT + 1.0 + n if not workers_after else server_exit + 1.0 + n
        b.signal(SERVE, pid, 15, t - 0.5, disposition="handler")
        b.exit(pid, t, code=143)
        if pid not in unreaped:
            b.reap(SERVE if not workers_after else 1, pid, t + 0.01, code=143)
        b.gpu_proc(WORKERS[pid], pid, 0, t + 0.01)
    b.exit(TRACKER, server_exit - 0.2, code=0)
    b.reap(SERVE, TRACKER, server_exit - 0.19, code=0)
    b.exit(SERVE, server_exit, code=code)
    b.reap(HARNESS, SERVE, server_exit + 0.01, code=code)
    gpu_back(b, (server_exit if not workers_after else server_exit + 3.0) + 0.1)
    b.health(FAULT + 0.25, server_exit, 0.5, status=503)
    b.health(server_exit, end, 0.5, status=None, error="refused")
    b.mark("scenario", 9.0, end, scenario=row, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario=row, fault_signal="SIGTERM", fault_target="serve",
           fault_pids=[SERVE])
    return b


def verdicts(b, scenario=None):
    report = verify_timeline(b.timeline(), MATRIX, scenario)
    assert len(report.scenarios) == 1
    return {r.id: r for r in report.scenarios[0].rules}


# --- target-exits -------------------------------------------------------------------------------
def test_target_exits_passes_when_the_killed_server_is_gone_at_once():
    rule = verdicts(sigkill_serve(server()))["target-exits"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.001)
    assert rule.threshold == 30


def test_target_exits_fails_when_the_server_ignores_sigterm_past_the_limit():
    b = server()
    b.health(3.0, 110, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="ignored")
    b.mark("scenario", 9.0, 110.0, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    rules = verdicts(b)
    assert rules["target-exits"].verdict == "fail"
    assert "still alive at scenario end" in rules["target-exits"].evidence[0].text
    assert rules["graceful-shutdown"].verdict == "fail"
    assert "ignored" in rules["graceful-shutdown"].evidence[0].text


def test_target_exits_is_inconclusive_when_the_window_ends_before_the_limit():
    b = server()
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.mark("scenario", 9.0, 20.0, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    assert verdicts(b)["target-exits"].verdict == "inconclusive"


# --- graceful-shutdown --------------------------------------------------------------------------
def test_graceful_shutdown_passes_on_handler_and_clean_exit():
    rule = verdicts(sigterm_serve(server()))["graceful-shutdown"]
    assert rule.verdict == "pass"
    assert rule.measured == pytest.approx(4.0, abs=0.01)


def test_graceful_shutdown_fails_on_a_dirty_exit_status():
    rule = verdicts(sigterm_serve(server(), code=1))["graceful-shutdown"]
    assert rule.verdict == "fail" and "status 1" in rule.evidence[0].text


def test_graceful_shutdown_passes_when_never_delivered_and_it_exits_0_by_itself():
    """The kernel records every delivery to a traced process: none means the signal was
    blocked (the resource tracker masks SIGTERM) or ignored; a clean exit by itself is graceful."""
    rule = verdicts(sigterm_serve(server(), disposition=None))["graceful-shutdown"]
    assert rule.verdict == "pass"
    assert any("never took SIGTERM" in e.text and "exited with status 0" in e.text
               for e in rule.evidence)


@pytest.mark.parametrize("code, verdict", [(143, "pass"), (1, "fail"), (137, "fail")])
def test_graceful_shutdown_takes_a_blocked_sigterm_read_by_signalfd(code, verdict):
    """An init such as catatonit (`podman run --init`) blocks SIGTERM and reads it with
    signalfd: no delivery is ever recorded. Its own exit with 128+15 is a graceful shutdown, as a
    handler's would be; any other status is not."""
    rule = verdicts(sigterm_serve(server(), disposition=None, code=code))["graceful-shutdown"]
    assert rule.verdict == verdict, rule.evidence
    text = " ".join(e.text for e in rule.evidence)
    if verdict == "pass":
        assert "never delivered (blocked: read with signalfd or sigwait" in text, text
        assert "status 143" in text
    else:
        assert f"status {code}" in text, text


def test_graceful_shutdown_is_inconclusive_when_undelivered_and_still_running_at_the_end():
    b = server()
    b.health(3.0, 30.0, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition=None)
    b.mark("scenario", 9.0, 30.0, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    assert verdicts(b)["graceful-shutdown"].verdict == "inconclusive"


def test_graceful_shutdown_accepts_a_late_sigterm_ignored_while_already_shutting_down():
    """SIGTERM to all: the server asked a worker to stop first; the worker ignores the late
    SIGTERM so its CUDA teardown completes, and exits 0 by itself."""
    b = server()
    row = "no-load/sigterm/all"
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.signal(INJECTOR, 102, 15, FAULT + 0.2, disposition="ignored")
    b.exit(102, FAULT + 0.5, code=0)
    b.reap(SERVE, 102, FAULT + 0.51, code=0)
    b.exit(SERVE, FAULT + 1.0, code=0)
    b.reap(HARNESS, SERVE, FAULT + 1.01, code=0)
    b.mark("scenario", 9.0, 110.0, scenario=row, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario=row, fault_signal="SIGTERM", fault_target="all",
           fault_pids=[SERVE, 102])
    rule = verdicts(b)["graceful-shutdown"]
    assert rule.verdict == "pass"
    assert any("ignored SIGTERM at +0.20 s (already shutting down) and exited with status 0" in e.text
               for e in rule.evidence)


def test_graceful_shutdown_fails_when_an_ignored_sigterm_leaves_it_running_past_the_limit():
    """A worker that ignores SIGTERM and only exits when its server goes away much later."""
    b = server()
    row = "no-load/sigterm/worker"
    b.health(3.0, 110.0, 0.5)
    b.signal(INJECTOR, 102, 15, FAULT, disposition="ignored")
    b.exit(102, FAULT + 95.0, code=0)
    b.reap(SERVE, 102, FAULT + 95.01, code=0)
    b.mark("scenario", 9.0, 110.0, scenario=row, server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario=row, fault_signal="SIGTERM", fault_target="worker",
           fault_pids=[102])
    rule = verdicts(b)["graceful-shutdown"]
    assert rule.verdict == "fail" and "exited only at +95.00 s, after the 90 s limit" in rule.evidence[0].text


# --- cleanup-order ------------------------------------------------------------------------------
def test_cleanup_order_passes_when_workers_exit_before_the_server():
    rule = verdicts(sigterm_serve(server()))["cleanup-order"]
    assert rule.verdict == "pass" and rule.measured < 0


def test_cleanup_order_fails_when_workers_outlive_a_terminated_server():
    rule = verdicts(sigterm_serve(server(), workers_after=True))["cleanup-order"]
    assert rule.verdict == "fail"
    assert any("pid 102" in e.text and "re-parented to 1" in e.text for e in rule.evidence)


def test_cleanup_order_fails_when_a_child_survives_a_sigkilled_server():
    rule = verdicts(sigkill_serve(server(), orphan=True))["cleanup-order"]
    assert rule.verdict == "fail"
    text = [e.text for e in rule.evidence if e.pid == 102][0]
    assert text.startswith(f"pid 102 {STAGE} re-parented to 1 at +0.00 s")
    assert "still alive at scenario end +35.00 s" in text


def test_cleanup_order_is_inconclusive_when_the_server_never_exits():
    b = server()
    b.signal(INJECTOR, SERVE, 9, FAULT)
    b.mark("scenario", 9.0, 45.0, scenario="no-load/sigkill/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigkill/serve", fault_signal=9,
           fault_target="serve", fault_pids=[SERVE])
    rules = verdicts(b)
    assert rules["cleanup-order"].verdict == "inconclusive"
    assert rules["target-exits"].verdict == "fail"


# --- no-residue ---------------------------------------------------------------------------------
def test_no_residue_passes_when_everything_is_gone():
    rule = verdicts(sigkill_serve(server()))["no-residue"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.23, abs=0.001)


def test_no_residue_names_the_orphan_with_its_new_parent():
    rule = verdicts(sigkill_serve(server(), orphan=True))["no-residue"]
    assert rule.verdict == "fail"
    assert [e.pid for e in rule.evidence] == [102]
    assert "re-parented to 1" in rule.evidence[0].text


def test_no_residue_is_inconclusive_when_the_window_is_shorter_than_the_limit():
    rule = verdicts(sigkill_serve(server(), orphan=True, end=20.0))["no-residue"]
    assert rule.verdict == "inconclusive"


def test_lost_kernel_events_make_process_rules_inconclusive():
    b = sigkill_serve(server())
    b.lost("kernel", 12, FAULT + 0.1, FAULT + 0.2)
    rules = verdicts(b)
    assert rules["no-residue"].verdict == "inconclusive"
    assert "lost" in rules["no-residue"].summary
    assert rules["service-unavailable"].verdict == "pass"   # HTTP evidence is unaffected


# --- no-zombies ---------------------------------------------------------------------------------
def test_no_zombies_passes_when_every_exit_is_reaped():
    assert verdicts(sigkill_serve(server()))["no-zombies"].verdict == "pass"


def test_no_zombies_fails_on_an_unreaped_worker():
    rule = verdicts(sigterm_serve(server(), unreaped=(103,)))["no-zombies"]
    assert rule.verdict == "fail"
    assert rule.evidence[0].pid == 103 and "never reaped" in rule.evidence[0].text


def test_no_zombies_counts_a_namespace_s_teardown_as_reaps_by_the_kernel():
    """A container's init killed: the kernel reaps the rest of its namespace itself."""
    b = sigkill_serve(server(), reaper=None)
    for n, pid in enumerate([TRACKER, 103, 104]):
        b.kernel_reap(pid, FAULT + 0.3 + 0.01 * n)
    rule = verdicts(b)["no-zombies"]
    assert rule.verdict == "fail"   # 102 was neither waited for nor freed: a zombie
    assert [e.pid for e in rule.evidence] == [102]
    b.kernel_reap(102, FAULT + 0.5)
    rule = verdicts(b)["no-zombies"]
    assert rule.verdict == "pass", rule.summary
    assert "by the kernel (no wait call)" in rule.evidence[0].text


def test_a_wait_call_s_reap_is_kept_over_the_kernel_s_release_seen_first():
    b = sigkill_serve(server())
    b.kernel_reap(SERVE, FAULT + 0.005)   # the free can reach the ring buffer before the wait call
    proc = build_model(b.timeline()).process(SERVE, ns(FAULT))
    assert proc.reaped_by == HARNESS and proc.reap_signal == 9
    assert proc.reap_t == ns(FAULT + 0.005)


def test_no_zombies_is_inconclusive_without_the_kernel_source():
    b = sigkill_serve(server(sources=("procfs", "gpu", "http")))
    assert verdicts(b)["no-zombies"].verdict == "inconclusive"


# --- gpu-released -------------------------------------------------------------------------------
def test_gpu_released_measures_the_release_latency():
    rule = verdicts(sigkill_serve(server()))["gpu-released"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.4, abs=0.001)


def test_gpu_released_fails_while_an_orphan_holds_memory():
    rule = verdicts(sigkill_serve(server(), orphan=True))["gpu-released"]
    assert rule.verdict == "fail"
    texts = " | ".join(e.text for e in rule.evidence)
    assert "GPU 0 still at 20.50 GiB" in texts and "pid 102" in texts


def test_gpu_released_is_inconclusive_without_the_gpu_source():
    b = sigkill_serve(server(sources=("kernel", "procfs", "http")))
    rule = verdicts(b)["gpu-released"]
    assert rule.verdict == "inconclusive" and "gpu" in rule.summary


# --- service-unavailable ------------------------------------------------------------------------
def test_service_unavailable_passes_when_health_is_refused_and_stays_so():
    rule = verdicts(sigkill_serve(server()))["service-unavailable"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(0.252, abs=0.001)


def test_service_unavailable_fails_on_a_later_2xx():
    b = sigkill_serve(server())
    b.request(FAULT + 5.0, FAULT + 5.1, "chat", status=200)
    rule = verdicts(b)["service-unavailable"]
    assert rule.verdict == "fail" and "answered HTTP 200 at +5.10 s" in rule.evidence[1].text


def test_service_unavailable_looks_only_at_the_scenarios_own_server():
    """A recording of a whole suite holds several servers: a 200 from another server (or a
    stale probe of a gone one) is not this scenario's evidence."""
    b = sigkill_serve(server())
    other = Span(ns(FAULT + 5.0), ns(FAULT + 5.1), "GET /health",
                 {"http.request.method": "GET", "url.full": "http://127.0.0.1:9001/health",
                  "http.response.status_code": 200}, "probe")
    b.add(other)
    assert verdicts(b)["service-unavailable"].verdict == "fail"  # no URL in the marks: all count
    for event in b.events:
        if isinstance(event, Span) and event.attributes.get("omnitrace.mark") in ("scenario", "fault"):
            event.attributes["omnitrace.server.url"] = "http://127.0.0.1:8000"
    assert verdicts(b)["service-unavailable"].verdict == "pass"


def test_service_unavailable_is_inconclusive_when_the_hold_was_not_watched():
    """Down at +0.25 s, but the window ends at +3 s: staying down for the 5 s hold is unknown."""
    rule = verdicts(sigkill_serve(server(), end=FAULT + 3.0))["service-unavailable"]
    assert rule.verdict == "inconclusive" and "before the 5 s hold was watched" in rule.summary


def test_service_unavailable_is_inconclusive_without_http_evidence():
    b = sigkill_serve(server(sources=("kernel", "procfs", "gpu")))
    assert verdicts(b)["service-unavailable"].verdict == "inconclusive"


# --- inflight-fail-fast -------------------------------------------------------------------------
def _under_load(b, outcome):
    b.request(FAULT - 1.0, *outcome)
    for event in b.events:                     # relabel the marks as the under-load row
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    return b


def test_inflight_requests_failing_fast_pass():
    rule = verdicts(_under_load(sigkill_serve(server()), (FAULT + 0.01, "chat", None, "reset")))
    assert rule["inflight-fail-fast"].verdict == "pass"
    assert rule["inflight-fail-fast"].measured == pytest.approx(0.01, abs=0.001)


def test_inflight_a_2xx_answered_as_the_fault_landed_counts_neither_way():
    """Seen on the correct testbed on a busy machine: a stream's last bytes were already sent
    when the signal landed and the client read them 30-110 ms later. It is no hang and no
    failure to fail; the other in-flight request decides."""
    b = _under_load(sigkill_serve(server()), (FAULT + 0.01, "chat", None, "reset"))
    b.request(FAULT - 2.0, FAULT + 0.08, "chat-stream", status=200)
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "pass", rule.summary
    assert any("within the 0.2 s grace" in e.text for e in rule.evidence)
    alone = verdicts(_under_load(sigkill_serve(server()), (FAULT + 0.08, "chat-stream", 200)))
    assert alone["inflight-fail-fast"].verdict == "inconclusive"


def test_inflight_a_2xx_after_the_grace_was_not_interrupted_and_fails():
    b = _under_load(sigkill_serve(server()), (FAULT + 0.5, "chat-stream", 200))
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "fail" and "not failed" in rule.evidence[0].text


def test_inflight_request_still_open_at_scenario_end_is_a_hang():
    rule = verdicts(_under_load(sigkill_serve(server()), (None, "chat")))["inflight-fail-fast"]
    assert rule.verdict == "fail" and "a hang" in rule.evidence[0].text


def test_inflight_is_inconclusive_with_no_request_in_flight():
    b = sigkill_serve(server())
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    assert verdicts(b)["inflight-fail-fast"].verdict == "inconclusive"


# --- stop-accepting -----------------------------------------------------------------------------
def test_stop_accepting_passes_when_new_requests_are_refused():
    assert verdicts(sigterm_serve(server()))["stop-accepting"].verdict == "pass"


def test_stop_accepting_fails_when_a_new_request_is_served_late():
    b = sigterm_serve(server())
    b.request(FAULT + 3.0, FAULT + 3.5, "chat", status=200)
    rule = verdicts(b)["stop-accepting"]
    assert rule.verdict == "fail" and rule.measured == pytest.approx(3.0)


def test_stop_accepting_is_inconclusive_with_no_request_after_the_grace_period():
    b = server()
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.exit(SERVE, FAULT + 1, code=0)
    b.mark("scenario", 9.0, 105.0, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    assert verdicts(b)["stop-accepting"].verdict == "inconclusive"


# --- oom-contract -------------------------------------------------------------------------------
HOG = 300


def oom(b, chat=(503, True), speech=(503, True), server_dies=False):
    b.spawn(HOG, HARNESS, "python3", FAULT, cmdline=["python3", "-m", "omnitrace.inject.oom_hog"])
    b.gpu_proc(0, HOG, 59, FAULT + 0.5)
    b.health(3.0, FAULT + 1.0, 0.5)
    b.health(FAULT + 1.0, FAULT + 60, 0.5, status=503)
    b.request(FAULT + 2.0, FAULT + 3.0, "chat", status=chat[0], openai=chat[1])
    b.request(FAULT + 4.0, FAULT + 6.0, "speech", status=speech[0], openai=speech[1])
    if server_dies:
        b.exit(SERVE, FAULT + 5.0, code=1)
    b.exit(HOG, FAULT + 60)
    b.mark("scenario", 9.0, FAULT + 65, scenario="oom/gpu-hog", server_pid=SERVE)
    b.mark("oom", FAULT, FAULT + 60, scenario="oom/gpu-hog", oom_pids=[HOG])
    return b


def test_oom_contract_passes_when_the_server_degrades_and_stays_up():
    rule = verdicts(oom(server()))["oom-contract"]
    assert rule.verdict == "pass" and rule.measured == pytest.approx(2.0)


def test_oom_contract_fails_on_speech_400_and_on_server_exit():
    rule = verdicts(oom(server(), speech=(400, True), server_dies=True))["oom-contract"]
    assert rule.verdict == "fail"
    texts = " | ".join(e.text for e in rule.evidence)
    assert "HTTP 400" in texts and "exited at +5.00 s under OOM" in texts


def test_oom_contract_is_inconclusive_without_the_response_body():
    assert verdicts(oom(server(), chat=(500, None)))["oom-contract"].verdict == "inconclusive"


def test_oom_speech_on_a_text_model_is_not_applicable_not_a_failure():
    """vLLM serving a text model answers 404 to /v1/audio/speech (measured): a speech request
    under OOM answering 404 is no finding when the endpoint was already absent before the fault."""
    b = server()
    b.request(FAULT - 3.0, FAULT - 2.9, "speech", status=404)
    b = oom(b, speech=(404, False))
    rule = verdicts(b)["oom-contract"]
    assert rule.verdict == "pass", rule.summary
    assert any("speech: not applicable" in e.text and "404" in e.text for e in rule.evidence)


def test_oom_speech_404_without_a_before_is_still_a_failure():
    """A 404 under OOM from a server whose speech endpoint answered 2xx before is a failure."""
    b = server()
    b.request(FAULT - 3.0, FAULT - 2.9, "speech", status=200)
    assert verdicts(oom(b, speech=(404, False)))["oom-contract"].verdict == "fail"


def test_inflight_says_when_the_server_has_no_endpoint_for_load():
    b = server()
    b.request(FAULT - 3.0, FAULT - 2.9, "chat", status=404)   # a plain web service
    b = sigkill_serve(b)
    for event in b.events:
        if getattr(event, "attributes", {}).get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = "under-load/sigkill/serve"
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "inconclusive"
    assert "no endpoint for load" in rule.summary and "404" in rule.summary


def test_graceful_shutdown_accepts_a_signal_reraised_after_the_handler():
    b = server()
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    children_die(b, FAULT + 0.1, reaper=SERVE, code=143)
    b.signal(SERVE, SERVE, 15, FAULT + 0.2)              # uvicorn re-raises after its shutdown
    b.exit(SERVE, FAULT + 0.201)
    b.reap(HARNESS, SERVE, FAULT + 0.21, sig=15)
    b.mark("scenario", 9.0, FAULT + 1.5, scenario="no-load/sigterm/serve", server_pid=SERVE)
    b.mark("fault", FAULT, FAULT, scenario="no-load/sigterm/serve", fault_signal="SIGTERM",
           fault_target="serve", fault_pids=[SERVE])
    rules = verdicts(b)
    assert rules["graceful-shutdown"].verdict == "pass"
    assert "re-raised SIGTERM" in rules["graceful-shutdown"].evidence[0].text
    # the window is shorter than residue_s, yet everything was reaped inside it
    assert rules["no-zombies"].verdict == "pass"


def test_graceful_shutdown_fails_when_killed_by_someone_else_after_the_handler():
    b = sigterm_serve(server())
    b.events = [e for e in b.events if not (e.kind == "reap" and e.pid == SERVE)]
    b.signal(INJECTOR, SERVE, 15, FAULT + 3.9)
    b.reap(HARNESS, SERVE, FAULT + 4.01, sig=15)
    assert verdicts(b)["graceful-shutdown"].verdict == "fail"


def test_the_fault_lands_when_the_kernel_saw_the_signal_not_when_the_mark_opened():
    """The injector opens its fault mark, then looks the processes up and signals them: on a busy
    machine 90 ms passed in between, and a request answered in that gap was judged as an
    in-flight request that did not fail. The kernel's signal record is the fault's time."""
    b = TimelineBuilder(("kernel", "procfs", "gpu", "http"))
    b.events = [e for e in sigkill_serve(server()).events
                if getattr(e, "name", "") != "omnitrace.fault"]
    b.mark("fault", FAULT - 0.3, FAULT + 0.001, scenario="no-load/sigkill/serve",
           fault_signal="SIGKILL", fault_target="serve", fault_pids=[SERVE])
    _under_load(b, (FAULT + 0.01, "chat", None, "reset"))
    b.request(FAULT - 2.0, FAULT - 0.1, "chat-stream", status=200)   # answered before the kill
    report = verify_timeline(b.timeline(), MATRIX, None)
    (scenario,) = report.scenarios
    assert scenario.fault_s == pytest.approx(FAULT, abs=1e-6)
    rule = {r.id: r for r in scenario.rules}["inflight-fail-fast"]
    assert rule.verdict == "pass", rule.summary
    judged = [e.text for e in rule.evidence if not e.text.startswith("before the fault")]
    assert judged == ["POST /v1/chat/completions (chat) opened at -1.00 s ended error reset at "
                      "+0.01 s"], judged


def test_inflight_a_request_to_an_endpoint_the_server_lacks_is_not_judged():
    """The pytest plugin's mix sent speech to vLLM serving a text model: 404 before the fault,
    and a speech request open at the fault answered 404 too. It is not a request that did not
    fail: the endpoint does not exist."""
    b = _under_load(sigkill_serve(server()), (FAULT + 0.01, "chat", None, "reset"))
    b.request(FAULT - 3.0, FAULT - 2.9, "speech", status=404)
    b.request(FAULT - 0.5, FAULT + 0.3, "speech", status=404)
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "pass", rule.summary
    assert any("not applicable" in e.text for e in rule.evidence)


def test_inflight_a_request_whose_connection_was_refused_was_never_in_flight():
    """Seen against real vLLM: requests opened 40 ms before a SIGINT whose connect() was refused
    once the server closed its listener. They never reached the server, so they cannot show that
    in-flight requests failed fast: alone they leave the rule undecided, not passed."""
    b = _under_load(sigkill_serve(server()), (FAULT + 0.09, "chat", None, "refused"))
    rule = verdicts(b)["inflight-fail-fast"]
    assert rule.verdict == "inconclusive", rule.summary
    assert any("never reached the server" in e.text for e in rule.evidence)
    both = _under_load(sigkill_serve(server()), (FAULT + 0.09, "chat", None, "refused"))
    both.request(FAULT - 1.0, FAULT + 0.01, "chat-stream", error="reset")
    assert verdicts(both)["inflight-fail-fast"].verdict == "pass"
