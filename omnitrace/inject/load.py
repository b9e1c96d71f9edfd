"""HTTP load against an OpenAI-style server, one OpenTelemetry span per request.

Open-loop arrivals at `rate` per second, at most `concurrency` requests in flight, `requests` in
all. Each request ends with one reason: completed (2xx, body read; for streams the `[DONE]` event),
4xx, 5xx, truncated (a stream that stopped without `[DONE]`), reset, refused, timeout, or
cancelled (the caller stopped the run while it was open). Span
attributes follow OTel's HTTP conventions plus omnitrace.request.* (docs/marks.md), so the
recorder's OTLP receiver turns them into evidence for the "requests fail fast" rules.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass

import httpx
from opentelemetry.trace import Status, StatusCode

from omnitrace.inject import marks

KINDS = ("chat", "chat-stream", "speech", "mix")
MIX = ("chat", "chat-stream", "speech")


def kinds_of(kind: str) -> tuple[str, ...]:
    """The request kinds a load of `kind` sends: mix cycles through MIX."""
    return MIX if kind == "mix" else (kind,)
PROMPT = "Describe, in one paragraph, what a fault-injection matrix checks."
END_REASONS = ("completed", "4xx", "5xx", "error-event", "truncated", "reset", "refused", "timeout",
               "cancelled")
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class RequestShape:
    """How long each generation request runs. A tiny model answers 64 tokens in milliseconds, so
    under-load rows against it would have nothing in flight at the fault: `max_tokens` with
    `ignore_eos` (vLLM keeps generating past the end-of-sequence token) or `min_tokens` makes each
    request last a known number of decode steps."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int | None = None
    ignore_eos: bool = False

    def body_fields(self) -> dict:
        fields: dict = {"max_tokens": self.max_tokens}
        if self.min_tokens is not None:
            fields["min_tokens"] = self.min_tokens
        if self.ignore_eos:
            fields["ignore_eos"] = True
        return fields


@dataclass
class RequestResult:
    index: int
    kind: str
    path: str
    start: float           # time.monotonic()
    end: float
    status: int | None
    end_reason: str
    ttfb_s: float | None
    nbytes: int
    openai_error: bool | None = None

    @property
    def duration_s(self) -> float:
        return self.end - self.start


def request_spec(kind: str, model: str | None,
                 shape: RequestShape = RequestShape()) -> tuple[str, str, dict | None]:
    """(method, path, JSON body) of one request of `kind`. Without a model name the body names
    none, and an OpenAI-compatible server answers with the model it serves."""
    if kind == "health":
        return "GET", "/health", None
    if kind == "speech":
        body = {"input": PROMPT, "voice": "default"}
        path = "/v1/audio/speech"
    else:
        body = {"messages": [{"role": "user", "content": PROMPT}], **shape.body_fields()}
        path = "/v1/chat/completions"
    if kind == "chat-stream":
        body["stream"] = True
    if model is not None:
        body["model"] = model
    return "POST", path, body


def discover_model(url: str, timeout_s: float = 5.0) -> str | None:
    """The first model GET /v1/models lists, or None when the server lists none or cannot say.
    vLLM answers 404 to a request naming a model it does not serve, so load must use this name;
    ask once while the server is healthy, not after a fault, when the call could hang."""
    try:
        reply = httpx.get(url.rstrip("/") + "/v1/models", timeout=timeout_s)
        reply.raise_for_status()
        return str(reply.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None


def classify_error(exc: Exception) -> str:
    """httpx's exception -> the end reason (also the span's error.type)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    # Peer closed or reset mid-exchange: RemoteProtocolError, ReadError, WriteError.
    return "reset"


class Load:
    """One load run. `in_flight` and `started` are safe to read from another thread."""

    def __init__(self, url: str, kind: str = "chat", rate: float = 2.0, requests: int = 10,
                 concurrency: int = 8, timeout_s: float = 60.0, model: str | None = None,
                 scenario: str | None = None, shape: RequestShape = RequestShape(),
                 absent: frozenset[str] = frozenset()):
        if kind not in KINDS + ("health",):
            raise ValueError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
        self.url, self.kind, self.rate, self.requests = url.rstrip("/"), kind, rate, requests
        self.concurrency, self.timeout_s, self.model, self.scenario = concurrency, timeout_s, model, scenario
        self.shape = shape
        self.mix = tuple(k for k in MIX if k not in absent)  # kinds the server has endpoints for
        self.results: list[RequestResult] = []
        self.in_flight = 0
        self.started = 0
        self.streaming = 0      # requests that got their first byte and are not done yet
        self._open: dict[int, float] = {}   # index -> start (monotonic) of each open request
        self._changed = threading.Condition()

    # --- waiting from another thread -----------------------------------------------------------
    def wait_until(self, predicate, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def _note(self, **delta: int) -> None:
        with self._changed:
            for name, d in delta.items():
                setattr(self, name, getattr(self, name) + d)
            self._changed.notify_all()

    # --- running ---------------------------------------------------------------------------------
    def bound_s(self) -> float:
        """The longest a run can take: the last arrival plus one request timeout, plus slack."""
        return self.requests / max(self.rate, 1e-3) + self.timeout_s + 5

    async def run(self) -> list[RequestResult]:
        kinds = itertools.cycle(self.mix) if self.kind == "mix" else itertools.repeat(self.kind)
        limit = asyncio.Semaphore(self.concurrency)
        timeout = httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            tasks = []
            t0 = time.monotonic()
            for index, kind in zip(range(self.requests), kinds):
                await asyncio.sleep(max(0.0, t0 + index / self.rate - time.monotonic()))
                await limit.acquire()
                task = asyncio.create_task(self._one(client, index, kind))
                task.add_done_callback(lambda _t: limit.release())
                tasks.append(task)
            await asyncio.gather(*tasks)
        marks.flush_load()
        return self.results

    def run_in_thread(self) -> threading.Thread:
        """Run on a private event loop in a daemon thread; cancel() stops it from any thread."""
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(asyncio.wait_for(self.run(), self.bound_s()))

        def main() -> None:
            try:
                self._loop.run_until_complete(self._task)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            finally:
                marks.flush_load()
        thread = threading.Thread(target=main, name="omnitrace-load", daemon=True)
        thread.start()
        return thread

    def cancel(self) -> None:
        """End every request still open (their spans say `cancelled`)."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # the loop finished meanwhile
                pass

    def finished_any(self) -> bool:
        return bool(self.results)

    def open_at(self, t: float) -> int:
        """How many requests were open at monotonic time `t` (started before it, not ended by
        it): those a fault at `t` hit. A request started after `t` does not count."""
        with self._changed:
            still_open = sum(start < t for start in self._open.values())
            ended = sum(r.start < t <= r.end for r in self.results)
        return still_open + ended

    async def _one(self, client: httpx.AsyncClient, index: int, kind: str) -> None:
        method, path, body = request_spec(kind, self.model, self.shape)
        span = marks.load_tracer().start_span(f"{method} {path}", attributes=marks.clean({
            "http.request.method": method, "url.full": self.url + path, "url.path": path,
            "omnitrace.request.kind": kind, "omnitrace.request.index": index,
            "omnitrace.request.scenario": self.scenario}))
        start = time.monotonic()
        status, ttfb, nbytes, reason, openai_error = None, None, 0, "completed", None
        with self._changed:
            self._open[index] = start
        self._note(in_flight=1, started=1)
        first = True
        try:
            async with client.stream(method, self.url + path, json=body) as response:
                status = response.status_code
                body = BodyReader(streaming=kind == "chat-stream")
                async for chunk in response.aiter_bytes():
                    if first:
                        ttfb, first = time.monotonic() - start, False
                        self._note(streaming=1)
                    nbytes += len(chunk)
                    body.feed(chunk)
                tail = body.tail
                reason = _reason_for(status, body)
                openai_error = has_openai_error_shape(tail) if status >= 400 else None
        except httpx.HTTPError as exc:
            reason = classify_error(exc)
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            end = time.monotonic()
            with self._changed:
                self._open.pop(index, None)
            self._note(in_flight=-1, streaming=0 if first else -1)
            result = RequestResult(index, kind, path, start, end, status, reason, ttfb, nbytes,
                                   openai_error)
            self.results.append(result)
            finish_span(span, result)


class BodyReader:
    """Reads an answer as it arrives. A status is not the whole story: a stream already answered
    200 reports an engine failure as an SSE event `data: {"error": {...}}` (vLLM does), possibly
    followed by `data: [DONE]`; so every event is looked at, not only the status or the end."""

    def __init__(self, streaming: bool):
        self.streaming = streaming
        self.tail = b""            # the last 4 KiB, for the OpenAI error-shape check
        self.done = False          # a `data: [DONE]` event arrived
        self.error_event = False   # an event (or a whole 2xx body) was an error object
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-4096:]
        if not self.streaming:
            self._partial += chunk if len(self._partial) < (1 << 20) else b""
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[-(1 << 20):]
        for line in lines:
            self._event(line.strip())

    def finish(self) -> None:
        if self.streaming:
            self._event(self._partial.strip())
        elif is_error_object(self._partial):
            self.error_event = True

    def _event(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
        elif data.startswith(b"{") and b'"error"' in data and is_error_object(data):
            self.error_event = True


def _error_of(data: bytes):
    """The `error` member of a JSON object body or event; None when there is none."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc.get("error") if isinstance(doc, dict) else None


def is_error_object(data: bytes) -> bool:
    return _error_of(data) not in (None, "", {})


def _reason_for(status: int, body: BodyReader) -> str:
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    body.finish()
    if body.error_event:
        return "error-event"
    if body.streaming and not body.done:
        return "truncated"
    return "completed"


def has_openai_error_shape(tail: bytes) -> bool:
    """Whether an error body has the OpenAI shape {"error": {"message": str, ...}}."""
    error = _error_of(tail)
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def finish_span(span, r: RequestResult) -> None:
    attributes = {"omnitrace.request.end_reason": r.end_reason, "omnitrace.request.bytes": r.nbytes,
                  "http.response.body.size": r.nbytes}
    if r.status is not None:
        # A 2xx whose body was then cut off keeps its status; error.type says it was cut, and
        # verify counts that as a failure (docs/marks.md).
        attributes["http.response.status_code"] = r.status
    if r.ttfb_s is not None:
        attributes["omnitrace.request.ttfb_s"] = round(r.ttfb_s, 6)
    if r.openai_error is not None:
        attributes["omnitrace.response.openai_error"] = r.openai_error
    if r.end_reason != "completed":
        attributes["error.type"] = str(r.status) if r.end_reason in ("4xx", "5xx") else r.end_reason
        span.set_status(Status(StatusCode.ERROR, r.end_reason))
    span.set_attributes(attributes)
    span.end()


def summary_table(results: list[RequestResult]) -> str:
    """One line per end reason with count and latency figures, then the total."""
    rows = [("end reason", "count", "p50 s", "max s", "ttfb p50 s")]
    for reason in END_REASONS:
        group = [r for r in results if r.end_reason == reason]
        if group:
            rows.append((reason, str(len(group)), f"{_pct(group, 50):.3f}", f"{_pct(group, 100):.3f}",
                         _ttfb(group)))
    rows.append(("total", str(len(results)), f"{_pct(results, 50):.3f}" if results else "-",
                 f"{_pct(results, 100):.3f}" if results else "-", _ttfb(results)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths))) for row in rows)


def _pct(group: list[RequestResult], p: int) -> float:
    values = sorted(r.duration_s for r in group)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else 0.0


def _ttfb(group: list[RequestResult]) -> str:
    values = sorted(r.ttfb_s for r in group if r.ttfb_s is not None)
    return f"{values[len(values) // 2]:.3f}" if values else "-"
