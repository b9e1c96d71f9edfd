"""The OTLP receiver fed by the real OpenTelemetry SDK exporters (protobuf and JSON), in a child
process configured only through the environment the receiver hands the command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from omnitrace.record.otlp import OtlpReceiver
from omnitrace.record.source import RecordContext
from omnitrace.timeline import TimelineWriter, make_header, read_timeline

# The child brackets each SDK call with monotonic readings, so the test knows the window in which
# the span's start and end must land once converted from Unix time.
CLIENT = textwrap.dedent("""
    import json, sys, time
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status, StatusCode
    if sys.argv[1] == "json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))  # endpoint from env
    tracer = provider.get_tracer("omnitrace-test")
    w = {}
    w["start_before"] = time.monotonic_ns()
    span = tracer.start_span("scenario kill-stage",
                             attributes={"omnitrace.mark": "scenario",
                                         "omnitrace.scenario": "kill-stage", "attempt": 2,
                                         "ratio": 0.5, "tags": ["a", "b"]})
    w["start_after"] = time.monotonic_ns()
    time.sleep(0.05)
    w["end_before"] = time.monotonic_ns()
    span.end()
    w["end_after"] = time.monotonic_ns()
    w["trace_id"] = format(span.get_span_context().trace_id, "032x")
    w["span_id"] = format(span.get_span_context().span_id, "016x")
    t0 = time.time_ns()
    from opentelemetry import trace
    failed = tracer.start_span("POST", start_time=t0, context=trace.set_span_in_context(span),
                               attributes={"http.request.method": "POST", "error.type": "timeout"})
    failed.set_status(Status(StatusCode.ERROR, "client timeout"))
    failed.end(end_time=t0 + 1_500_000_000)
    provider.shutdown()
    print(json.dumps(w))
""")


@pytest.fixture
def receiver(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = TimelineWriter(path, make_header(["test"], {"otlp": {}}))
    source = OtlpReceiver()
    env = source.prepare(RecordContext(emit=writer.append))
    source.start_env = env
    yield source, writer, path
    source.stop()
    if not writer._closed:
        writer.close({})


def finish(source, writer, path):
    source.stop()
    writer.close({"otlp": source.counters()})
    return read_timeline(path)


def run_client(encoding: str, env: dict[str, str], **extra: str) -> dict:
    child_env = {**os.environ, **env, **extra}
    child_env.pop("OTEL_SDK_DISABLED", None)
    done = subprocess.run([sys.executable, "-c", CLIENT, encoding], env=child_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("encoding,extra", [
    ("protobuf", {}),
    ("protobuf", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
    ("json", {}),
], ids=["protobuf", "protobuf-gzip", "json"])
def test_sdk_spans_land_on_the_timeline_clock(receiver, encoding, extra):
    source, writer, path = receiver
    assert source.start_env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == source.endpoint + "/v1/traces"
    window = run_client(encoding, source.start_env, **extra)
    timeline = finish(source, writer, path)

    spans = {s.name: s for s in timeline.of_kind("span")}
    assert set(spans) == {"scenario kill-stage", "POST"}
    mark = spans["scenario kill-stage"]
    # Unix time -> monotonic: the converted times fall inside the child's own monotonic brackets
    # (the slack covers the offset being read with two clock calls on a busy machine).
    slack = 20_000_000
    assert window["start_before"] - slack <= mark.t <= window["start_after"] + slack
    assert window["end_before"] - slack <= mark.end <= window["end_after"] + slack
    assert mark.is_mark() and mark.source == "otlp"
    assert mark.trace_id == window["trace_id"] and mark.span_id == window["span_id"]
    assert mark.attributes["omnitrace.scenario"] == "kill-stage"
    assert mark.attributes["attempt"] == 2 and mark.attributes["ratio"] == 0.5
    assert mark.attributes["tags"] == ["a", "b"]
    assert mark.attributes["service.name"] == "otlp-test"

    failed = spans["POST"]
    assert failed.end - failed.t == 1_500_000_000  # explicit times keep their exact duration
    assert failed.status == "error" and failed.attributes["error.type"] == "timeout"
    # the request was made inside the scenario's span: the link survives
    assert failed.parent_span_id == window["span_id"] and failed.trace_id == window["trace_id"]
    assert mark.parent_span_id == ""
    assert timeline.footer["otlp"]["spans"] == 2


def test_rejects_what_is_not_otlp(receiver):
    source, writer, path = receiver
    url = source.start_env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    assert httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 415
    bad_json = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    bad_id = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "name": "x"}]}]}]}
    assert httpx.post(url, json=bad_id).status_code == 400
    # Metrics sent to the shared endpoint are acknowledged, not failed, and leave no events.
    assert httpx.post(source.endpoint + "/v1/metrics", content=b"",
                      headers={"Content-Type": "application/x-protobuf"}).status_code == 200
    timeline = finish(source, writer, path)
    assert list(timeline.of_kind("span")) == []
    assert timeline.footer["otlp"]["rejected"] == 3 and timeline.footer["otlp"]["ignored"] == 1


def test_json_accepts_string_and_number_times(receiver):
    """OTLP/JSON allows 64-bit integers as strings or numbers; hex ids come back as hex."""
    source, writer, path = receiver
    url = source.start_env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    start = 1_700_000_000_000_000_000
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "parentSpanId": "0102030405060708", "name": "fault inject", "startTimeUnixNano": str(start), "endTimeUnixNano": start + 7,
         "status": {"code": 2},
         "attributes": [{"key": "omnitrace.fault", "value": {"stringValue": "SIGKILL"}},
                        {"key": "n", "value": {"intValue": "3"}}]}]}]}]}
    reply = httpx.post(url, json=body)
    assert reply.status_code == 200 and reply.json() == {}
    (span,) = finish(source, writer, path).of_kind("span")
    assert span.end - span.t == 7
    assert span.trace_id == "5b8efff798038103d269b633813fc60c" and span.span_id == "eee19b7ec3c1b174"
    assert span.parent_span_id == "0102030405060708"
    assert span.attributes == {"omnitrace.fault": "SIGKILL", "n": 3} and span.status == "error"
