"""Builds the evidence sources (GPU, HTTP, OTLP) and live-metrics observers `record` asks for.

Kept apart from the recorder so the recorder core does not depend on NVML, httpx or
prometheus-client being importable.
"""
from __future__ import annotations

from typing import Callable

from omnitrace.record.source import Source


def evidence_sources(gpu: str, health_url: str | None, health: bool, otlp: bool) -> list[Source]:
    sources: list[Source] = []
    try:
        from omnitrace.record.gpu import make_gpu_source
    except ImportError:
        make_gpu_source = None
    if make_gpu_source is not None:
        source = make_gpu_source(gpu)
        if source is not None:
            sources.append(source)
    try:
        from omnitrace.record.http import make_http_sources
    except ImportError:
        make_http_sources = None
    if make_http_sources is not None:
        sources.extend(make_http_sources(health_url=health_url, health=health, otlp=otlp))
    return sources


def live_observers(host: str, port: int) -> tuple[Callable, Callable[[], None]]:
    from omnitrace.export.live_metrics import LiveMetrics
    metrics = LiveMetrics(host=host, port=port)
    metrics.start()
    return metrics.observe, metrics.stop
