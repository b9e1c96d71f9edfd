"""The health prober: GET the traced server's health endpoint 20 times a second (`record
--health-rate HZ`; 0: no prober; the rate is in the header as health_rate_hz) and write each
probe as an HTTP client span (OpenTelemetry conventions, source "probe"): its status code, or how it
failed (refused, reset, timeout), and its latency. That is the evidence for "health turned
503 (or stopped answering) N ms after the fault", measured far finer than a 0.5 s poll.

Where to probe: `--health-url`, or discovered as `/health` on the port the traced tree listens on
(the process nearest the root that listens; rediscovered every second, so a suite that starts one
server per test is followed from server to server). Either gives way to the URL the traced command
announces (a SERVER_SPAN: the scenario driver and the pytest plugin send one per server they
start), which is the only way to learn a host port a container runtime picked after the start.
"""
from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import httpx
import psutil

from omnitrace.events import Log, Span
from omnitrace.record.source import RecordContext, Source

PROBE_HZ = 20.0
PROBE_TIMEOUT_S = 1.0  # short against the upstream suite's 5 s, long against a loaded CI box
REDISCOVER_S = 1.0
HEALTH_PATH = "/health"


class HealthProber(Source):
    name = "health"

    def __init__(self, url: str | None = None, *, hz: float = PROBE_HZ,
                 timeout_s: float = PROBE_TIMEOUT_S, path: str = HEALTH_PATH):
        self.url = url
        self.discover = url is None
        self.path = path
        self.period_ns = int(1e9 / hz)
        self.timeout_s = timeout_s
        self._ctx: RecordContext | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = {"probes": 0, "answered": 0, "failed": 0, "servers_found": 0}

    def prepare(self, ctx: RecordContext) -> dict[str, str]:
        self._ctx = ctx
        return {}

    def start(self, ctx: RecordContext) -> None:
        self._ctx = ctx
        ctx.on_server_announced(self.follow)
        self._thread = threading.Thread(target=self._run, name="health-prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)

    def describe(self) -> dict[str, Any]:
        return {"backend": "http", "url": self.url or f"discovered: {self.path} on the traced "
                                                      "server's listening port",
                "hz": round(1e9 / self.period_ns, 3), "timeout_s": self.timeout_s,
                "precision_ns": self.period_ns}

    def counters(self) -> dict[str, int]:
        return dict(self._count)

    def _run(self) -> None:
        # No keep-alive: each probe opens a connection as a fresh client would, so a dead server
        # reads as "refused" rather than as a stale pooled socket. trust_env=False: never a proxy.
        with httpx.Client(timeout=self.timeout_s, trust_env=False,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:
            due = time.monotonic_ns()
            next_discovery = 0
            while not self._stop.is_set():
                if self.discover and time.monotonic_ns() >= next_discovery:
                    self._rediscover()
                    next_discovery = time.monotonic_ns() + int(REDISCOVER_S * 1e9)
                if self.url:
                    self._probe(client, self.url)
                # Probes run one at a time: a hung server slows probing to one per timeout,
                # which the spans show as a row of timeouts rather than as a pile-up.
                due = max(due + self.period_ns, time.monotonic_ns())
                self._stop.wait((due - time.monotonic_ns()) / 1e9)

    def _rediscover(self) -> None:
        assert self._ctx is not None
        found = discover_listener(self._ctx)
        if found is None or not self.discover:   # not discover: announced meanwhile, it wins
            return  # nothing listens (yet, or any more): keep probing the last server, if any
        pid, url = found[0], found[1] + self.path
        self._switch(url, pid, f"pid {pid} listens there")

    def follow(self, base_url: str, pid: int | None) -> None:
        """Probe the announced server from now on; discovery stops, since the command that
        started the server knows better than a listening socket (a container's keeper, conmon,
        listens on every port it publishes, the server on one inside its own network)."""
        self.discover = False
        self._switch(base_url.rstrip("/") + self.path, pid, "announced by the traced command")

    def _switch(self, url: str, pid: int | None, why: str) -> None:
        if url == self.url:
            return
        self.url = url
        self._count["servers_found"] += 1
        assert self._ctx is not None
        self._ctx.emit(Log(t=time.monotonic_ns(), pid=pid or 0, stream="omnitrace",
                           line=f"health prober: probing {url} ({why})"))

    def _probe(self, client: httpx.Client, url: str) -> None:
        attributes: dict[str, Any] = {"http.request.method": "GET", "url.full": url,
                                      "omnitrace.request.kind": "health"}
        status = "unset"
        t = time.monotonic_ns()
        try:
            response = client.get(url)
            end = time.monotonic_ns()
            attributes["http.response.status_code"] = response.status_code
            if response.status_code >= 400:
                status = "error"  # error.type stays for failures without an answer (marks.md)
            self._count["answered"] += 1
        except httpx.HTTPError as exc:
            end = time.monotonic_ns()
            attributes["error.type"] = error_kind(exc)
            status = "error"
            self._count["failed"] += 1
        self._count["probes"] += 1
        assert self._ctx is not None
        self._ctx.emit(Span(t=t, end=end, name="GET", attributes=attributes, source="probe",
                            trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8),
                            status=status))


def error_kind(exc: BaseException) -> str:
    """How a request failed, as docs/marks.md names it: refused, reset (also a connection closed
    without an answer), timeout, or connect_error for anything else that kept us from an answer."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        if isinstance(cause, (ConnectionResetError, BrokenPipeError)):
            return "reset"
        if isinstance(cause, TimeoutError):
            return "timeout"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        return "reset"  # accepted, then closed without an answer
    return "connect_error"


# --- where the traced server listens ---

def discover_listener(ctx: RecordContext) -> tuple[int, str] | None:
    """(pid, base URL) of the traced process nearest the root that listens on TCP: the API
    server of `vllm serve`, whose stages only talk over IPC. Lowest port when it has several."""
    for proc in _tree_nearest_first(ctx):
        ports = _listening(proc)
        if ports:
            host, port = min(ports, key=lambda hp: hp[1])
            return proc.pid, f"http://{host}:{port}"
    return None


def _tree_nearest_first(ctx: RecordContext) -> list[psutil.Process]:
    order: list[psutil.Process] = []
    seen: set[int] = set()
    if ctx.root_pid is not None:
        try:
            root = psutil.Process(ctx.root_pid)
            order.append(root)
            order.extend(root.children(recursive=True))  # psutil returns them breadth-first
        except psutil.Error:
            pass
    seen.update(p.pid for p in order)
    for pid in sorted(ctx.traced_pids() - seen):  # e.g. reparented orphans the kernel tracks
        try:
            order.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return order


def _listening(proc: psutil.Process) -> list[tuple[str, int]]:
    try:
        query = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        sockets = query(kind="tcp")
    except psutil.Error:
        return []
    return [(_client_host(c.laddr.ip), c.laddr.port) for c in sockets
            if c.status == psutil.CONN_LISTEN]


def _client_host(bound: str) -> str:
    if bound in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bound == "::":
        return "[::1]"
    return f"[{bound}]" if ":" in bound else bound


def make_http_sources(health_url: str | None = None, *, health: bool = True, otlp: bool = True,
                      probe_hz: float = PROBE_HZ,
                      probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[Source]:
    """The HTTP evidence for `record`: the OTLP receiver and the health prober (which discovers
    its URL when health_url is None)."""
    sources: list[Source] = []
    if otlp:
        from omnitrace.record.otlp import OtlpReceiver
        sources.append(OtlpReceiver())
    if health:
        sources.append(HealthProber(health_url, hz=probe_hz, timeout_s=probe_timeout_s))
    return sources
