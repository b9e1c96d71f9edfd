"""Fail-fast probes after a fault: single requests, each an OpenTelemetry span (like load's),
sent the way the upstream suite checks that the API "enters stable 5xx" instead of hanging."""
from __future__ import annotations

import asyncio

from omnitrace.inject.load import Load, RequestResult

PROBE_TIMEOUT_S = 20.0   # upstream's client timeout; the rule's limit (15 s) is below it


def failed(result: RequestResult) -> bool:
    return result.end_reason in ("5xx", "reset", "refused")


def probe(url: str, kind: str, count: int = 1, model: str | None = None, scenario: str | None = None,
          timeout_s: float = PROBE_TIMEOUT_S) -> list[RequestResult]:
    """`count` concurrent requests of `kind`; returns when all have ended (bounded by timeout_s)."""
    load = Load(url, kind, rate=1000.0, requests=count, concurrency=count, timeout_s=timeout_s,
                model=model, scenario=scenario)
    return asyncio.run(asyncio.wait_for(load.run(), load.bound_s()))
