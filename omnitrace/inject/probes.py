"""Fail-fast probes after a fault: single requests, each an OpenTelemetry span (like load's),
sent the way the upstream suite checks that the API "enters stable 5xx" instead of hanging."""
from __future__ import annotations

import asyncio

from omnitrace.inject.load import Load, RequestResult, RequestShape

PROBE_TIMEOUT_S = 20.0   # upstream's client timeout; the rule's limit (15 s) is below it
SHORTEST = RequestShape(max_tokens=1)


def failed(result: RequestResult) -> bool:
    return result.end_reason in ("5xx", "reset", "refused")


def probe(url: str, kind: str, count: int = 1, model: str | None = None, scenario: str | None = None,
          timeout_s: float = PROBE_TIMEOUT_S, shape: RequestShape = RequestShape()) -> list[RequestResult]:
    """`count` concurrent requests of `kind`; returns when all have ended (bounded by timeout_s)."""
    load = Load(url, kind, rate=1000.0, requests=count, concurrency=count, timeout_s=timeout_s,
                model=model, scenario=scenario, shape=shape)
    return asyncio.run(asyncio.wait_for(load.run(), load.bound_s()))


def absent_endpoints(url: str, kinds: tuple[str, ...], model: str | None = None,
                     scenario: str | None = None) -> dict[str, int]:
    """kind -> status for each request kind whose endpoint the healthy server does not have
    (404, 405 or 501 before any fault: a text model has no /v1/audio/speech; a plain web service
    no /v1/chat/completions). Asked once, before the fault, with the shortest request, so later
    404s are never counted as the server's answer to a fault. Each ask is a span like any probe:
    verify reads the same evidence (docs/matrix-run.md)."""
    absent = {}
    for kind in dict.fromkeys("chat" if k == "chat-stream" else k for k in kinds):
        result = probe(url, kind, model=model, scenario=scenario, shape=SHORTEST)[0]
        if result.status in (404, 405, 501):
            absent[kind] = result.status
            if kind == "chat":
                absent["chat-stream"] = result.status
    return absent
