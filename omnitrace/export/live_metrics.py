"""Live Prometheus metrics while `omnitrace record` runs (`--metrics-port`).

The recorder calls `LiveMetrics.observe(event)` for every event it writes, from the threads of all
its sources, so observe() only bumps counters and gauges (each prometheus_client metric has its own
lock) and keeps one small set of live pids under a lock of ours. Serving happens on
prometheus_client's own daemon thread; a scrape never touches the recorder.

Metric names are documented in docs/exports.md; dashboards/live-recording.json draws them.
"""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from omnitrace.errors import OmnitraceError
from omnitrace.events import (Event, Exit, Fork, GpuMemory, GpuProcess, Lost, ProcSnapshot,
                              SignalGenerate, Span, signal_name)
from omnitrace.model.http import request_from_span
from omnitrace.model.marks import mark_from_span

# The recorder's source names (omnitrace/record/*.py `name`): their lost counters start at 0.
RECORDER_SOURCES = ("kernel", "procfs", "gpu", "health", "otlp")


class LiveMetrics:
    """Serves the recording's running totals on http://host:port/metrics."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9464,
                 sources: tuple[str, ...] = RECORDER_SOURCES):
        """sources: the recorder's source names, so their lost-event counters read 0 from the
        start instead of appearing only at the first loss."""
        self.host, self.port = host, port
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.traced_processes = Gauge(
            "omnitrace_traced_processes", "Processes of the recorded tree alive now", registry=r)
        self.events = Counter(
            "omnitrace_events", "Events written to the timeline", ["kind"], registry=r)
        self.lost = Counter(
            "omnitrace_lost_events", "Events a source dropped (ring buffer or queue full)",
            ["source"], registry=r)
        self.signals = Counter(
            "omnitrace_signals", "Signals sent to or by traced processes", ["signal"], registry=r)
        self.gpu_used = Gauge(
            "omnitrace_gpu_memory_used_bytes", "Device memory in use", ["device"], registry=r)
        self.gpu_total = Gauge(
            "omnitrace_gpu_memory_total_bytes", "Device memory size", ["device"], registry=r)
        self.gpu_process = Gauge(
            "omnitrace_gpu_process_memory_used_bytes",
            "Device memory a traced process holds (0 once it let go)", ["device", "pid"], registry=r)
        self.http = Counter(
            "omnitrace_http_responses", "HTTP requests seen, by response status ('error' when the "
            "request got no response)", ["status_code"], registry=r)
        self.scenario = Gauge(
            "omnitrace_current_scenario", "1 for the latest scenario mark seen (one series at most)",
            ["row"], registry=r)  # a scenario is named by its matrix row id
        self._scenario: str | None = None
        for source in sources:
            self.lost.labels(source)
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self._handlers: dict[str, Callable[[Event], None]] = {
            Fork.kind: self._on_fork, ProcSnapshot.kind: self._on_proc, Exit.kind: self._on_exit,
            Lost.kind: self._on_lost, SignalGenerate.kind: self._on_signal,
            GpuMemory.kind: self._on_gpu_memory, GpuProcess.kind: self._on_gpu_process,
            Span.kind: self._on_span,
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise OmnitraceError(f"--metrics-port {self.port}: cannot listen on {self.host}:"
                                 f"{self.port} ({exc.strerror}); pick a free port") from None
        # port 0 asks the OS for a free one; report the real one
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, event: Event) -> None:
        self.events.labels(event.kind).inc()
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def _set_alive(self, pid: int, alive: bool) -> None:
        with self._lock:
            if alive:
                self._live.add(pid)
            else:
                self._live.discard(pid)
            self.traced_processes.set(len(self._live))

    def _on_fork(self, event: Fork) -> None:
        if not event.thread:
            self._set_alive(event.pid, True)

    def _on_proc(self, event: ProcSnapshot) -> None:
        # procfs sees processes that existed before the recording (no fork event for them)
        if event.state not in ("Z", "zombie", "X", "dead"):
            self._set_alive(event.pid, True)

    def _on_exit(self, event: Exit) -> None:
        if event.group_dead:
            self._set_alive(event.pid, False)

    def _on_lost(self, event: Lost) -> None:
        self.lost.labels(event.source).inc(event.count)

    def _on_signal(self, event: SignalGenerate) -> None:
        self.signals.labels(signal_name(event.signal)).inc()

    def _on_gpu_memory(self, event: GpuMemory) -> None:
        device = str(event.device)
        self.gpu_used.labels(device).set(event.used)
        self.gpu_total.labels(device).set(event.total)

    def _on_gpu_process(self, event: GpuProcess) -> None:
        self.gpu_process.labels(str(event.device), str(event.pid)).set(event.used)

    def _on_span(self, event: Span) -> None:
        # The model's readers of marks and requests, so live counts agree with verify's.
        mark = mark_from_span(event, -1)
        if mark is not None:
            if mark.scenario:
                self._on_scenario(mark.scenario)
            return
        request = request_from_span(event, -1)
        if request is not None:
            self.http.labels(str(request.status) if request.status is not None else "error").inc()

    def _on_scenario(self, scenario: str) -> None:
        # Marks reach the recorder when their span ends, so "current" is the latest one seen.
        with self._lock:
            if self._scenario not in (None, scenario):
                self.scenario.remove(self._scenario)
            self._scenario = scenario
            self.scenario.labels(scenario).set(1)
