"""Live metrics (LiveMetrics) and verdict metrics (textfile, Pushgateway), read back the way
Prometheus reads them."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from omnitrace.errors import OmnitraceError
from omnitrace.events import Exit, Fork, GpuMemory, GpuProcess, Lost, Span
from omnitrace.export.live_metrics import LiveMetrics
from omnitrace.export.prometheus import export_verdicts
from omnitrace.inject.server import free_port
from tests.test_export_helpers import SCENARIOS, synthetic_events

GIB = 1 << 30


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))]




@pytest.fixture
def live():
    metrics = LiveMetrics(port=0)
    metrics.start()
    yield metrics
    metrics.stop()


def test_live_metrics_count_what_the_recorder_writes(live):
    events = synthetic_events()
    for event in events:
        live.observe(event)
    found = samples(httpx.get(live.url).text)
    # serve root and stages 1-2 exited, stage 0 was killed: only the resource tracker is left
    assert value(found, "omnitrace_traced_processes") == 1
    assert value(found, "omnitrace_events_total", kind="fork") == 4
    assert value(found, "omnitrace_lost_events_total", source="kernel") == 3
    assert value(found, "omnitrace_lost_events_total", source="gpu") == 0
    assert value(found, "omnitrace_gpu_memory_used_bytes", device=0) == 0
    assert value(found, "omnitrace_gpu_memory_total_bytes", device=1) == 80 * GIB
    assert value(found, "omnitrace_gpu_process_memory_used_bytes", device=1, pid=4103) == 0
    assert value(found, "omnitrace_http_responses_total", status_code=503) == 2
    assert value(found, "omnitrace_http_responses_total", status_code=500) == 1
    assert value(found, "omnitrace_signals_total", signal="SIGTERM") == 3
    # the latest scenario mark wins, and only one scenario series exists
    assert value(found, "omnitrace_current_scenario", row=SCENARIOS[1]) == 1
    assert not any(name == "omnitrace_current_scenario" and dict(labels)["row"] == SCENARIOS[0]
                   for name, labels in found)


def test_live_metrics_observe_is_thread_safe(live):
    def fork_and_exit(base):
        for pid in range(base, base + 500):
            live.observe(Fork(t=pid, pid=pid, tid=pid, ppid=1))
        for pid in range(base, base + 250):
            live.observe(Exit(t=pid, pid=pid, tid=pid))
    threads = [threading.Thread(target=fork_and_exit, args=(10_000 * n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = samples(httpx.get(live.url).text)
    assert value(found, "omnitrace_traced_processes") == 4 * 250
    assert value(found, "omnitrace_events_total", kind="fork") == 2000


def test_live_metrics_bind_loopback_and_refuse_a_taken_port(live):
    assert live.host == "127.0.0.1"
    other = LiveMetrics(port=live.port)
    with pytest.raises(OmnitraceError, match=f"--metrics-port {live.port}"):
        other.start()


def test_live_metrics_keep_a_gpu_series_per_process(live):
    live.observe(GpuProcess(t=1, device=0, pid=7, used=GIB))
    live.observe(GpuMemory(t=1, device=0, used=GIB, total=2 * GIB))
    live.observe(Lost(t=2, source="gpu", count=2, end=3))
    live.observe(Span(t=3, end=4, name="GET /health", source="health",
                      attributes={"http.request.method": "GET", "url.path": "/health",
                                  "error.type": "refused"}))
    found = samples(httpx.get(live.url).text)
    assert value(found, "omnitrace_gpu_process_memory_used_bytes", device=0, pid=7) == GIB
    assert value(found, "omnitrace_lost_events_total", source="gpu") == 2
    assert value(found, "omnitrace_http_responses_total", status_code="error") == 1


# --- verdict metrics ------------------------------------------------------------------------------
def sample_report(run_id="run-42"):
    """verify's documented JSON (docs/verify.md): scenarios[] with rules[]."""
    return {"run_id": run_id, "scenarios": [
        {"id": SCENARIOS[0], "row": SCENARIOS[0], "signal": "SIGKILL", "target": "worker",
         "verdict": "fail", "rules": [
             {"id": "target-exits", "verdict": "pass", "measured": 0.003, "threshold": 30, "unit": "s",
              "evidence": [{"text": "pid 4102 exited at +0.00 s"}]},
             {"id": "gpu-released", "verdict": "pass", "measured": 40, "threshold": 30000, "unit": "ms",
              "evidence": []},
             {"id": "no-residue", "verdict": "fail", "measured": 35.0, "threshold": 30, "unit": "s",
              "evidence": [{"text": "pid 4101 still alive"}, {"text": "pid 4103 still alive"}]},
             {"id": "inflight-fail-fast", "verdict": "pass", "measured": 0.3, "threshold": 15,
              "unit": "s", "evidence": [{"text": "POST /v1/chat/completions ended HTTP 500"}]}]},
        {"id": SCENARIOS[1], "row": SCENARIOS[1], "signal": "SIGTERM", "target": "serve", "rules": [
            {"id": "inflight-fail-fast", "verdict": "fail", "measured": 0.9, "threshold": 15,
             "unit": "s", "evidence": [{"text": "POST /v1/chat/completions still open: a hang"}]},
            {"id": "graceful-shutdown", "verdict": "inconclusive", "measured": None,
             "threshold": 90, "unit": "s", "evidence": []}]},
    ]}


def test_verdict_textfile_has_state_sets_and_base_units(tmp_path):
    path = tmp_path / "omnitrace.prom"
    export_verdicts(sample_report(), textfile=str(path))
    found = samples(path.read_text())
    kill = dict(run_id="run-42", row=SCENARIOS[0], scenario=SCENARIOS[0], signal="SIGKILL",
                target="worker")
    term = dict(run_id="run-42", row=SCENARIOS[1], scenario=SCENARIOS[1], signal="SIGTERM",
                target="serve")
    assert value(found, "omnitrace_scenario_verdict", **kill, verdict="fail") == 1
    assert value(found, "omnitrace_scenario_verdict", **kill, verdict="pass") == 0
    # a scenario without its own verdict takes its worst rule
    assert value(found, "omnitrace_scenario_verdict", **term, verdict="fail") == 1
    assert value(found, "omnitrace_rule_verdict", **kill, rule="gpu-released", verdict="pass") == 1
    assert value(found, "omnitrace_gpu_release_latency_seconds", **kill, rule="gpu-released") == 0.04
    assert value(found, "omnitrace_rule_threshold_seconds", **kill, rule="gpu-released") == 30
    assert value(found, "omnitrace_exit_latency_seconds", **kill, rule="target-exits") == 0.003
    assert value(found, "omnitrace_orphan_processes", **kill, rule="no-residue") == 2
    assert value(found, "omnitrace_hung_requests", **kill, rule="inflight-fail-fast") == 0
    assert value(found, "omnitrace_hung_requests", **term, rule="inflight-fail-fast") == 1
    assert value(found, "omnitrace_run_scenarios", run_id="run-42", verdict="fail") == 2
    # an inconclusive rule with no figure exports its verdict but no measurement
    assert ("omnitrace_rule_measured_seconds",
            tuple(sorted({**term, "rule": "graceful-shutdown"}.items()))) not in found


def test_verdict_textfile_names_the_option_when_it_cannot_write(tmp_path):
    with pytest.raises(OmnitraceError, match="--prometheus-textfile"):
        export_verdicts(sample_report(), textfile=str(tmp_path / "missing-dir" / "x.prom"))


@pytest.fixture
def pushgateway(tmp_path):
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("Debian's prometheus-pushgateway is not installed (make setup installs it)")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up in {timeout} s")
        time.sleep(0.2)


def test_verdicts_pushed_to_a_pushgateway_keep_one_group_per_run(pushgateway):
    export_verdicts(sample_report("run-1"), pushgateway=pushgateway)
    export_verdicts(sample_report("run-2"), pushgateway=pushgateway)
    found = samples(httpx.get(pushgateway + "/metrics").text)
    for run in ("run-1", "run-2"):
        assert value(found, "omnitrace_run_scenarios", job="omnitrace", instance="", run_id=run,
                     verdict="fail") == 2


def test_push_to_an_unreachable_gateway_is_a_clear_error():
    with pytest.raises(OmnitraceError, match="--pushgateway"):
        export_verdicts(sample_report(), pushgateway=f"http://127.0.0.1:{free_port()}")
