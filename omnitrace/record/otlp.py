"""The OTLP receiver: an OTLP/HTTP traces endpoint on 127.0.0.1, so that spans from tests, the load
generator or any OpenTelemetry-instrumented client land on the timeline.

prepare() starts the listener and hands the command OTEL_EXPORTER_OTLP_ENDPOINT and
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; any OpenTelemetry SDK in the process tree then exports here
without being told. Both OTLP/HTTP encodings are accepted: protobuf and JSON (whose ids are hex and
whose 64-bit integers may be strings, per the OTLP spec), optionally gzip-compressed. Span times
arrive in Unix nanoseconds and are converted to the timeline's CLOCK_MONOTONIC on arrival. Spans
with `omnitrace.*` attributes are the scenario and fault marks (docs/marks.md). Metrics and logs
sent to the same endpoint are acknowledged and dropped, so clients do not log export errors.
"""
from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from omnitrace.events import Span
from omnitrace.record.source import SERVER_SPAN, RecordContext, Source, SourceUnavailable

try:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest, ExportTraceServiceResponse)
    MISSING = ""
except ImportError as exc:  # a sealed GPU machine may lack them: record without spans there
    MISSING = f"{exc}; install opentelemetry-proto to receive spans"

STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}
PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
IGNORED_PATHS = ("/v1/metrics", "/v1/logs")


class BadRequest(Exception):
    pass


class OtlpReceiver(Source):
    name = "otlp"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ctx: RecordContext | None = None
        self._lock = threading.Lock()
        self._count = {"requests": 0, "spans": 0, "rejected": 0, "ignored": 0}

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "prepare() starts the listener"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        if MISSING:
            raise SourceUnavailable(MISSING)
        self._ctx = ctx
        self._server = ThreadingHTTPServer(self._address, _Handler)
        self._server.daemon_threads = True
        self._server.receiver = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint + "/v1/traces",
            # Auto-instrumentation defaults to gRPC; this listener speaks OTLP/HTTP.
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }

    def start(self, ctx: RecordContext) -> None:
        pass  # listening since prepare(): the command's exporters are configured before it runs

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def describe(self) -> dict[str, Any]:
        return {"backend": "otlp-http", "endpoint": self.endpoint if self._server else "",
                "encodings": ["protobuf", "json"], "precision_ns": 1}

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._count)

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._count[key] += n

    def receive(self, body: bytes, content_type: str) -> int:
        """Decode one export request and emit its spans; returns how many."""
        request = decode_request(body, content_type)
        # Re-read the offset per request rather than once: it follows NTP steps made mid-run.
        offset = time.time_ns() - time.monotonic_ns()
        spans = list(spans_from_request(request, offset))
        assert self._ctx is not None
        for span in spans:
            self._ctx.emit(span)
            self._note_server(span)
        self._bump("spans", len(spans))
        return len(spans)


    def _note_server(self, span: Span) -> None:
        """A SERVER_SPAN says where the recorded server answers: tell the health prober."""
        url = span.attributes.get("omnitrace.server.url")
        if span.name == SERVER_SPAN and isinstance(url, str) and url:
            pid = span.attributes.get("omnitrace.server.pid")
            self._ctx.server_announced(url, pid if isinstance(pid, int) else None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK exporters reuse their connection
    timeout = 30

    def do_POST(self) -> None:
        receiver: OtlpReceiver = self.server.receiver  # type: ignore[attr-defined]
        receiver._bump("requests")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if path in IGNORED_PATHS:
            receiver._bump("ignored")
            return self._reply(200, b"{}" if content_type == "application/json" else b"",
                               content_type or "application/x-protobuf")
        if path != "/v1/traces":
            return self._reply(404, b"only /v1/traces is received here\n", "text/plain")
        try:
            if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
            receiver.receive(body, content_type)
        except BadRequest as exc:
            receiver._bump("rejected")
            code = 415 if "content type" in str(exc) else 400
            return self._reply(code, f"{exc}\n".encode(), "text/plain")
        except (OSError, EOFError) as exc:  # a corrupt gzip stream
            receiver._bump("rejected")
            return self._reply(400, f"bad gzip body: {exc}\n".encode(), "text/plain")
        if content_type == "application/json":
            return self._reply(200, b"{}", "application/json")
        return self._reply(200, ExportTraceServiceResponse().SerializeToString(), content_type)

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the command's own output must not be interleaved with access logs


# --- decoding ---

def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type in PROTOBUF_TYPES:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BadRequest(f"not an OTLP protobuf traces request: {exc}") from None
        return request
    if content_type == "application/json":
        try:
            document = json.loads(body)
            json_format.ParseDict(_ids_hex_to_base64(document), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, AttributeError, TypeError) as exc:
            raise BadRequest(f"not an OTLP/JSON traces request: {exc}") from None
        return request
    raise BadRequest(f"unsupported content type {content_type!r}: send application/x-protobuf "
                     "or application/json")


def _ids_hex_to_base64(document: dict) -> dict:
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping (which
    ParseDict implements) expects base64 for bytes fields; translate them in place."""
    for resource_spans in _field(document, "resourceSpans", "resource_spans"):
        for scope_spans in _field(resource_spans, "scopeSpans", "scope_spans"):
            for span in _field(scope_spans, "spans"):
                _convert_ids(span)
                for link in _field(span, "links"):
                    _convert_ids(link)
    return document


def _field(obj: dict, *names: str) -> list:
    for name in names:
        if name in obj:
            return obj[name] or []
    return []


def _convert_ids(obj: dict) -> None:
    for key in ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise BadRequest(f"{key} {value!r} is not hex, as OTLP/JSON requires") from None


def spans_from_request(request: ExportTraceServiceRequest, wall_offset_ns: int):
    """Timeline Span events from an export request; wall_offset_ns = Unix ns - monotonic ns."""
    for resource_spans in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {kv.key: any_value(kv.value) for kv in span.attributes}
                if service is not None:
                    attributes.setdefault("service.name", service)
                start = span.start_time_unix_nano - wall_offset_ns
                end = (span.end_time_unix_nano - wall_offset_ns) if span.end_time_unix_nano else start
                yield Span(t=start, end=end, name=span.name, attributes=attributes, source="otlp",
                           trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                           status=STATUS_NAMES.get(span.status.code, "unset"),
                           parent_span_id=span.parent_span_id.hex())


def any_value(value) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)
