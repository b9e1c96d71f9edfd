"""`omnitrace export perfetto` and `omnitrace export otlp` on a recording of a 3-stage server."""
from __future__ import annotations

import json
import threading

import pytest

from omnitrace.cli import main
from omnitrace.events import Span
from omnitrace.record.otlp import OtlpReceiver, decode_request
from omnitrace.record.source import RecordContext
from tests.test_export_helpers import SCENARIOS, SERVE, STAGES, TRACKER, write_synthetic


@pytest.fixture
def recording(tmp_path):
    return str(write_synthetic(tmp_path / "run.jsonl"))


def test_perfetto_trace_has_a_track_per_process_with_lifetime_and_instants(recording, tmp_path):
    out = tmp_path / "trace.json"
    assert main(["export", "perfetto", recording, "-o", str(out)]) == 0
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names[STAGES[0]] == "VLLM::StageEngineCoreProc_stage0_replica0_DP0"
    assert {"scenarios", "HTTP", "GPU"} <= set(names.values())
    lifetimes = {e["pid"]: e for e in events if e.get("cat") == "process" and e["ph"] == "X"}
    assert set(lifetimes) == {SERVE, TRACKER, *STAGES}
    # stage 0 forked at 10 ms and was SIGKILLed at 1200 ms, gone 3 ms later (times in µs)
    assert lifetimes[STAGES[0]]["ts"] == 10_000 and lifetimes[STAGES[0]]["dur"] == 1_193_000
    assert lifetimes[STAGES[0]]["args"]["signal"] == "SIGKILL"
    assert lifetimes[TRACKER]["args"]["still_running_at_end"] is True
    instants = [(e["pid"], e["name"]) for e in events if e["ph"] == "i"]
    assert (STAGES[0], "SIGKILL sent") in instants
    assert (STAGES[0], "exit (SIGKILL)") in instants
    assert (STAGES[1], f"reaped by pid {SERVE}") in instants
    counters = [e for e in events if e["ph"] == "C" and e["name"] == "GPU 0 memory used"]
    assert [c["args"]["bytes"] for c in counters] == [1 << 30, 0]
    http = [e for e in events if e.get("cat", "").startswith("http.") and e["ph"] == "b"]
    assert len(http) == 8 and any("still open" in e["name"] for e in http)
    marks = [e["name"] for e in events if e.get("cat") == "mark.scenario" and e["ph"] == "b"]
    assert marks == [f"scenario {s}" for s in SCENARIOS]
    # every async begin has its end, or the UI draws it open forever
    begins = {(e["cat"], e["id"]) for e in events if e["ph"] == "b"}
    assert begins == {(e["cat"], e["id"]) for e in events if e["ph"] == "e"}


def test_otlp_json_file_decodes_as_otlp_with_process_tree_as_trace(recording, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(["export", "otlp", recording, "-o", str(out)]) == 0
    traces_line, logs_line = out.read_text().splitlines()
    # the recorder's OTLP receiver follows the OTLP/JSON spec (hex ids): it must read our file
    request = decode_request(traces_line.encode(), "application/json")
    spans = request.resource_spans[0].scope_spans[0].spans
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    stage0 = by_name["VLLM::StageEngineCoreProc_stage0_replica0_DP0"][0]
    root = by_name["python3"][0] if by_name["python3"][0].parent_span_id == b"" else by_name["python3"][1]
    assert stage0.parent_span_id == root.span_id and stage0.trace_id == root.trace_id
    assert stage0.end_time_unix_nano - stage0.start_time_unix_nano == 1_193_000_000
    assert len(by_name["omnitrace.scenario"]) == 2 and len(by_name["omnitrace.fault"]) == 2
    assert len(by_name["GET /health"]) == 6
    logs = json.loads(logs_line)["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    bodies = [r["body"]["stringValue"] for r in logs]
    assert any(b.startswith("SIGKILL sent to pid 4102") for b in bodies)
    assert "3 kernel events lost" in bodies
    tied = [r for r in logs if r["body"]["stringValue"].startswith("pid 4102")]
    assert tied and all(len(r["spanId"]) == 16 for r in tied)   # hex, not base64


def test_otlp_export_to_an_endpoint_lands_on_a_receiver(recording):
    received: list[Span] = []
    lock = threading.Lock()

    def emit(event):
        with lock:
            received.append(event)
    receiver = OtlpReceiver()
    receiver.prepare(RecordContext(emit))
    try:
        assert main(["export", "otlp", recording, "--endpoint", receiver.endpoint]) == 0
    finally:
        receiver.stop()
    assert len([s for s in received if s.name == "omnitrace.scenario"]) == 2
    assert any(s.attributes.get("process.pid") == STAGES[0] for s in received)


def test_otlp_export_needs_a_destination(recording, capsys):
    assert main(["export", "otlp", recording]) == 2
    assert "--endpoint" in capsys.readouterr().err


def test_otlp_export_keeps_a_client_request_inside_its_parent_span(tmp_path):
    """A request a test client made inside its own span keeps that trace and parent on export."""
    from omnitrace.timeline import make_header, write_timeline
    from tests.test_export_helpers import T0, synthetic_events
    from omnitrace.events import Span as SpanEvent

    trace, parent, own = "5b8efff798038103d269b633813fc60c", "0102030405060708", "eee19b7ec3c1b174"
    request = SpanEvent(t=T0 + 2500 * 1_000_000, end=T0 + 2600 * 1_000_000, name="POST",
                        attributes={"http.request.method": "POST", "url.path": "/v1/chat/completions",
                                    "http.response.status_code": 200},
                        trace_id=trace, span_id=own, parent_span_id=parent)
    path = tmp_path / "run.jsonl"
    write_timeline(path, make_header(["x"], {"http": {}}), synthetic_events() + [request],
                   {"t": T0 + 3000 * 1_000_000})
    out = tmp_path / "out.jsonl"
    assert main(["export", "otlp", str(path), "-o", str(out)]) == 0
    spans = decode_request(out.read_text().splitlines()[0].encode(), "application/json") \
        .resource_spans[0].scope_spans[0].spans
    (exported,) = [s for s in spans if s.span_id.hex() == own]
    assert exported.trace_id.hex() == trace and exported.parent_span_id.hex() == parent
