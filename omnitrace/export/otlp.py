"""A timeline as OpenTelemetry spans and logs: sent to a collector over OTLP/HTTP (protobuf), or
written in the OTLP JSON file format (JSON Lines, one Export*ServiceRequest per line).

What becomes what:
  spans  one trace for the recording: a span per process lifetime, parented by who forked it, so a
         trace viewer shows the process tree; the scenario/fault/OOM marks; HTTP requests keep the
         trace and span ids their client gave them.
  logs   signals sent and delivered, exits, reaps, OOM kills, lost events, GPU errors and the log
         lines the recorder kept, each tied to its process's span.
Times are Unix nanoseconds: timeline (CLOCK_MONOTONIC) time plus the header's wall_offset_ns.
"""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from omnitrace import __version__
from omnitrace.errors import OmnitraceError
from omnitrace.events import signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.timeline import Timeline

SCOPE = InstrumentationScope(name="omnitrace", version=__version__)
# OTel severity numbers: INFO 9, WARN 13, ERROR 17
INFO, WARN, ERROR = 9, 13, 17
_STATUS = {"ok": Status.STATUS_CODE_OK, "error": Status.STATUS_CODE_ERROR}


def export_otlp(timeline: Timeline, endpoint: str | None = None, out: str | Path | None = None,
                timeout_s: float = 10.0) -> tuple[int, int]:
    """Send to `endpoint` (base URL; /v1/traces and /v1/logs are appended) and/or write `out`.
    Returns (spans, log records)."""
    traces, logs = otlp_requests(timeline)
    if out is not None:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(to_otlp_json(traces) + "\n")
            handle.write(to_otlp_json(logs) + "\n")
    if endpoint is not None:
        base = endpoint.rstrip("/")
        for path, message in (("/v1/traces", traces), ("/v1/logs", logs)):
            try:
                reply = httpx.post(base + path, content=message.SerializeToString(), timeout=timeout_s,
                                   headers={"Content-Type": "application/x-protobuf"})
            except httpx.HTTPError as exc:
                raise OmnitraceError(f"--endpoint {endpoint}: cannot send {path} ({exc})") from None
            if reply.status_code >= 300:
                raise OmnitraceError(f"--endpoint {endpoint}: {path} answered HTTP "
                                     f"{reply.status_code}: {reply.text[:200]}")
    spans = sum(len(s.spans) for r in traces.resource_spans for s in r.scope_spans)
    records = sum(len(s.log_records) for r in logs.resource_logs for s in r.scope_logs)
    return spans, records


def to_otlp_json(message) -> str:
    """OTLP/JSON differs from protobuf's canonical JSON in one way: ids are hex, not base64."""
    document = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(document)
    return json.dumps(document, separators=(",", ":"))


def _ids_to_hex(obj: Any) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                obj[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(obj, list):
        for item in obj:
            _ids_to_hex(item)


def otlp_requests(timeline: Timeline) -> tuple[ExportTraceServiceRequest, ExportLogsServiceRequest]:
    model = build_model(timeline)
    header = timeline.header
    resource = Resource(attributes=_attributes({
        "service.name": "omnitrace", "host.name": header.get("host", ""),
        "omnitrace.command": " ".join(header.get("command", [])),
        "omnitrace.run_id": str(header.get("run_id") or timeline.t0),
        "omnitrace.timeline": timeline.path}))
    builder = _Builder(model, int(header.get("wall_offset_ns") or 0),
                       _digest(f"{header.get('boot_id')}:{timeline.t0}", 16))
    builder.processes()
    builder.marks()
    builder.requests()
    builder.logs()
    traces = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=resource, scope_spans=[ScopeSpans(scope=SCOPE, spans=builder.spans)])])
    logs = ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=resource, scope_logs=[ScopeLogs(scope=SCOPE, log_records=builder.records)])])
    return traces, logs


def _digest(text: str, size: int) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:size]


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        out = AnyValue()
        out.array_value.values.extend(_value(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def _attributes(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in attrs.items() if v is not None]


class _Builder:
    def __init__(self, model: Model, wall_offset_ns: int, trace_id: bytes):
        self.model, self.offset, self.trace_id = model, wall_offset_ns, trace_id
        self.spans: list[Span] = []
        self.records: list[LogRecord] = []
        self.process_span: dict[int, bytes] = {}   # id(Process) -> span id

    def unix(self, t: int) -> int:
        return t + self.offset

    def span_id(self, *parts: Any) -> bytes:
        return _digest(":".join(map(str, parts)), 8)

    def processes(self) -> None:
        procs = sorted(self.model.processes, key=lambda p: (p.start or 0, p.pid))
        for proc in procs:
            self.process_span[id(proc)] = self.span_id("process", proc.pid, proc.start)
        for proc in procs:
            parent = self.model.process(proc.ppid, proc.start) if proc.ppid else None
            code, killed_by = proc.exit_status()
            start = proc.start if proc.start is not None else self.model.t0
            end = proc.exit_t if proc.exit_t is not None else self.model.t_end
            self.spans.append(Span(
                trace_id=self.trace_id, span_id=self.process_span[id(proc)],
                parent_span_id=self.process_span.get(id(parent), b"") if parent else b"",
                name=proc.name or proc.label(), kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=self.unix(start), end_time_unix_nano=self.unix(end),
                attributes=_attributes({
                    "process.pid": proc.pid, "process.parent_pid": proc.ppid,
                    "process.command_line": " ".join(proc.cmdline) or None,
                    "process.exit.code": code,
                    "omnitrace.exit.signal": signal_name(killed_by) if killed_by else None,
                    "omnitrace.started_before_recording": proc.start is None,
                    "omnitrace.running_at_end": proc.exit_t is None,
                    "omnitrace.reaped_by": proc.reaped_by,
                    "omnitrace.ns_pid": proc.ns_pid, "container.name": proc.container}),
                status=Status(code=Status.STATUS_CODE_ERROR if killed_by else Status.STATUS_CODE_UNSET)))

    def marks(self) -> None:
        for mark in self.model.marks:
            self.spans.append(Span(
                trace_id=self.trace_id, span_id=self.span_id("mark", mark.ref),
                name=f"omnitrace.{mark.kind}", kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=self.unix(mark.t), end_time_unix_nano=self.unix(mark.end),
                attributes=_attributes({
                    "omnitrace.mark": mark.kind, "omnitrace.scenario": mark.scenario,
                    "omnitrace.fault.signal": signal_name(mark.signal) if mark.signal else None,
                    "omnitrace.fault.target": mark.target, "omnitrace.pids": mark.pids or None})))

    def requests(self) -> None:
        events = self.model.timeline.events
        for req in self.model.requests:
            original = events[req.ref]   # the Span event: keep its ids and attributes
            trace_id = bytes.fromhex(original.trace_id) if original.trace_id else self.trace_id
            span_id = bytes.fromhex(original.span_id) if original.span_id else self.span_id("http", req.ref)
            # The client's parent only means something inside the client's own trace.
            parent = bytes.fromhex(original.parent_span_id) if original.trace_id and \
                original.parent_span_id else b""
            end = req.end if req.end is not None else self.model.t_end
            self.spans.append(Span(
                trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=original.name,
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=self.unix(req.t), end_time_unix_nano=self.unix(end),
                attributes=_attributes({**original.attributes, "omnitrace.source": req.source,
                                        "omnitrace.still_open_at_end": req.end is None}),
                status=Status(code=_STATUS.get(original.status, Status.STATUS_CODE_UNSET))))

    def log(self, t: int, severity: int, body: str, proc: Process | None = None,
            **attrs: Any) -> None:
        record = LogRecord(time_unix_nano=self.unix(t), observed_time_unix_nano=self.unix(t),
                           severity_number=severity,
                           severity_text={INFO: "INFO", WARN: "WARN", ERROR: "ERROR"}[severity],
                           body=AnyValue(string_value=body), attributes=_attributes(attrs))
        if proc is not None:
            record.trace_id, record.span_id = self.trace_id, self.process_span[id(proc)]
        self.records.append(record)

    def logs(self) -> None:
        for proc in self.model.processes:
            for r in proc.signals:
                self.log(r.t, WARN, f"{r.name} sent to {proc.pid_label()} by pid {r.sender_pid} "
                         f"({r.sender_comm}): {r.result}", proc, **{"process.pid": proc.pid,
                         "omnitrace.signal": r.name, "omnitrace.sender_pid": r.sender_pid})
                if r.delivered_t is not None:
                    self.log(r.delivered_t, INFO, f"{r.name} delivered to {proc.pid_label()}: "
                             f"{r.disposition}", proc, **{"process.pid": proc.pid,
                                                         "omnitrace.signal": r.name})
            code, killed_by = proc.exit_status()
            if proc.exit_t is not None:
                how = f"exit code {code}" if code is not None else (
                    f"killed by {signal_name(killed_by)}" if killed_by else "status unknown")
                self.log(proc.exit_t, ERROR if killed_by else INFO,
                         f"{proc.pid_label()} {proc.name} exited: {how}", proc, **{"process.pid": proc.pid})
            if proc.reap_t is not None:
                self.log(proc.reap_t, INFO, f"{proc.pid_label()} reaped by {proc.reaper_label()}", proc,
                         **{"process.pid": proc.pid, "omnitrace.reaper": proc.reaped_by})
        for event in self.model.timeline.of_kind("oom_kill", "lost", "gpu_error", "log"):
            proc = self.model.process(event.pid, event.t) if hasattr(event, "pid") else None
            if event.kind == "oom_kill":
                self.log(event.t, ERROR, f"kernel OOM killer chose pid {event.pid} ({event.comm})", proc)
            elif event.kind == "lost":
                self.log(event.t, WARN, f"{event.count} {event.source} events lost",
                         **{"omnitrace.source": event.source, "omnitrace.lost": event.count})
            elif event.kind == "gpu_error":
                self.log(event.t, ERROR, f"GPU {event.device}: {event.message}")
            else:
                self.log(event.t, INFO, event.line, proc, **{"process.pid": event.pid,
                                                             "log.iostream": event.stream})
        self.records.sort(key=lambda r: r.time_unix_nano)
