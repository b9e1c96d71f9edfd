"""Marks: spans the injector and the pytest plugin write to say what they did and when.

The convention (docs/marks.md is the reference for emitters):
  omnitrace.mark        scenario | fault | oom
  omnitrace.scenario    the matrix row id, e.g. "under-load/sigterm/serve"
  omnitrace.server.pid  the serve main process;  omnitrace.server.url  its base URL
  fault:  omnitrace.fault.signal (name or number), omnitrace.fault.target (worker|serve|all|pattern),
          omnitrace.fault.pids (the pids signalled, in order); span start = injection time
  oom:    omnitrace.oom.pids (the hog processes), omnitrace.oom.devices; span = hog alive
  input:  omnitrace.input.variant (an abnormal request, omnitrace/inject/input_variants.py);
          span = from just before the bad request is sent until it was answered
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omnitrace.events import Span, signal_number

MARK = "omnitrace.mark"
SCENARIO = "omnitrace.scenario"
SERVER_PID = "omnitrace.server.pid"
SERVER_URL = "omnitrace.server.url"
FAULT_SIGNAL = "omnitrace.fault.signal"
FAULT_TARGET = "omnitrace.fault.target"
FAULT_PIDS = "omnitrace.fault.pids"
OOM_PIDS = "omnitrace.oom.pids"
OOM_DEVICES = "omnitrace.oom.devices"
INPUT_VARIANT = "omnitrace.input.variant"
MARK_KINDS = ("scenario", "fault", "oom", "input")
FAULT_KINDS = ("fault", "oom", "input")     # the marks that say what was injected, and when


@dataclass(slots=True)
class Mark:
    kind: str                 # scenario | fault | oom | input
    t: int
    end: int
    scenario: str | None
    server_pid: int | None
    server_url: str | None
    signal: int | None = None
    target: str | None = None
    pids: list[int] = field(default_factory=list)
    devices: list[int] = field(default_factory=list)
    ref: int = -1
    variant: str | None = None   # input marks: which abnormal request was sent


def _int_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (int, str)):
        value = [value]
    out = []
    for item in value:
        try:
            out.append(int(item))
        except (TypeError, ValueError):
            continue
    return out


def mark_from_span(span: Span, ref: int) -> Mark | None:
    """The mark a span carries, or None for an ordinary span (an HTTP request, say)."""
    attrs = span.attributes
    kind = attrs.get(MARK)
    if kind not in MARK_KINDS:
        return None
    signal = attrs.get(FAULT_SIGNAL)
    try:
        signal = signal_number(signal) if signal not in (None, "") else None
    except ValueError:
        signal = None
    server_pid = attrs.get(SERVER_PID)
    return Mark(kind=kind, t=span.t, end=max(span.end, span.t), scenario=attrs.get(SCENARIO),
                server_pid=int(server_pid) if server_pid not in (None, "") else None,
                server_url=attrs.get(SERVER_URL), signal=signal, target=attrs.get(FAULT_TARGET),
                pids=_int_list(attrs.get(FAULT_PIDS) if kind == "fault" else attrs.get(OOM_PIDS)),
                devices=_int_list(attrs.get(OOM_DEVICES)), ref=ref,
                variant=attrs.get(INPUT_VARIANT) if kind == "input" else None)
