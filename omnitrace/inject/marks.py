"""Marks and request spans, sent with the OpenTelemetry SDK so they land on the recorder's timeline.

`omnitrace record` gives the command OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; the SDK's OTLP/HTTP
exporter reads those itself. With neither set (no recorder) spans are still built, so callers can
use the same code path, but go nowhere. docs/marks.md (the verify engineer's) is the convention.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any, Iterator

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from omnitrace.record.source import SERVER_SPAN

TRACER_NAME = "omnitrace.inject"
_lock = threading.Lock()
_provider: TracerProvider | None = None


def exporting() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def tracer() -> trace.Tracer:
    """This process's tracer; our own provider, so a test suite's global OTel setup is untouched."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": "omnitrace"}))
            if exporting():
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                # Simple (synchronous) export: a mark must be on the timeline before the fault it
                # announces has effects, and short-lived CLI processes must not lose it.
                _provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=5)))
            atexit.register(_provider.shutdown)
        return _provider.get_tracer(TRACER_NAME)


_load_provider: TracerProvider | None = None


def load_tracer() -> trace.Tracer:
    """Request spans go through a batch processor: exporting one per request synchronously would
    stall the load generator's event loop."""
    global _load_provider
    with _lock:
        if _load_provider is None:
            _load_provider = TracerProvider(resource=Resource.create({"service.name": "omnitrace-load"}))
            if exporting():
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.trace.export import BatchSpanProcessor
                _load_provider.add_span_processor(BatchSpanProcessor(
                    OTLPSpanExporter(timeout=5), schedule_delay_millis=200))
            atexit.register(_load_provider.shutdown)
        return _load_provider.get_tracer(TRACER_NAME)


def flush() -> None:
    if _provider is not None:
        _provider.force_flush(5000)


def flush_load() -> None:
    if _load_provider is not None:
        _load_provider.force_flush(5000)


@contextlib.contextmanager
def span(name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    """A span around the with-block; an exception marks it as an error and propagates."""
    with tracer().start_as_current_span(name, attributes=clean(attributes),
                                        record_exception=False, set_status_on_exception=False) as sp:
        try:
            yield sp
        except BaseException as exc:
            sp.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTel attributes take scalars and homogeneous lists only; None means 'leave out'."""
    out = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = list(value) if isinstance(value, (tuple, set, frozenset)) else value
    return out


# --- the convention (docs/marks.md; omnitrace/model/marks.py reads it) ---------------------------
SCENARIO_SPAN = "omnitrace.scenario"
FAULT_SPAN = "omnitrace.fault"
OOM_SPAN = "omnitrace.oom"
INPUT_SPAN = "omnitrace.input"


def announce_server(pid: int, url: str, scenario: str | None = None) -> None:
    """Tell the recorder where the server answers (record/source.py's SERVER_SPAN): its health
    prober probes there from now on. Sent once the URL is known, before /health is awaited, so
    the recording has the server's start-up answers too."""
    tracer().start_span(SERVER_SPAN, attributes=clean({
        "omnitrace.server.pid": pid, "omnitrace.server.url": url,
        "omnitrace.scenario": scenario})).end()   # a simple processor: exported right here


def _common(kind: str, scenario: str | None, server_pid: int | None, server_url: str | None):
    return {"omnitrace.mark": kind, "omnitrace.scenario": scenario,
            "omnitrace.server.pid": server_pid, "omnitrace.server.url": server_url}


def scenario_attributes(scenario: str, server_pid: int | None = None,
                        server_url: str | None = None) -> dict[str, Any]:
    return _common("scenario", scenario, server_pid, server_url)


def fault_attributes(signal: str, target: str, pids: list[int], scenario: str | None = None,
                     server_pid: int | None = None, server_url: str | None = None) -> dict[str, Any]:
    """The span starts at injection time: open it right before the first signal."""
    return {**_common("fault", scenario, server_pid, server_url), "omnitrace.fault.signal": signal,
            "omnitrace.fault.target": target, "omnitrace.fault.pids": list(pids)}


def oom_attributes(pids: list[int], devices: list[int], scenario: str | None = None,
                   server_pid: int | None = None, server_url: str | None = None) -> dict[str, Any]:
    """The span covers the hog's life: from before it allocates until it has released."""
    return {**_common("oom", scenario, server_pid, server_url), "omnitrace.oom.pids": list(pids),
            "omnitrace.oom.devices": list(devices)}


def input_attributes(variant: str, scenario: str | None = None, server_pid: int | None = None,
                     server_url: str | None = None) -> dict[str, Any]:
    """The span starts right before the abnormal request is sent and ends once it was answered."""
    return {**_common("input", scenario, server_pid, server_url),
            "omnitrace.input.variant": variant}


def context_from_env() -> dict[str, Any]:
    """Scenario and server a parent (the scenario driver, the pytest plugin) handed down, so the
    marks of `omnitrace inject ...` run as a child name them without extra flags."""
    pid = os.environ.get("OMNITRACE_SERVER_PID")
    return {"scenario": os.environ.get("OMNITRACE_SCENARIO") or None,
            "server_pid": int(pid) if pid and pid.isdigit() else None,
            "server_url": os.environ.get("OMNITRACE_SERVER_URL") or None}
