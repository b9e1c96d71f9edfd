"""Builds the evidence sources (GPU, HTTP, OTLP) and live-metrics observers `record` asks for.

Kept apart from the recorder core, which needs neither NVML, httpx nor prometheus-client.
"""
from __future__ import annotations

from typing import Callable

from omnitrace.record.source import Source


def evidence_sources(gpu: str, health_url: str | None, health_hz: float,
                     otlp: bool) -> list[Source]:
    """health_hz: health probes per second, 0 for none."""
    from omnitrace.record.gpu import make_gpu_source
    from omnitrace.record.http import make_http_sources
    sources: list[Source] = []
    gpu_source = make_gpu_source(gpu)
    if gpu_source is not None:
        sources.append(gpu_source)
    sources.extend(make_http_sources(health_url=health_url, health=health_hz > 0, otlp=otlp,
                                     probe_hz=health_hz or 1.0))
    return sources


def live_observers(host: str, port: int) -> tuple[Callable, Callable[[], None]]:
    from omnitrace.export.live_metrics import LiveMetrics
    metrics = LiveMetrics(host=host, port=port)
    metrics.start()
    return metrics.observe, metrics.stop
