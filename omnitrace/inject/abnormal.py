"""Send one abnormal request inside an input mark, then the recovery request (docs/matrix-run.md).

    result = send_input(url, "malformed-json", model)      # the fault: an `input` mark + a span
    recovered = send_recovery(url, model, keyword="Paris")  # the next valid chat request

Both requests are OpenTelemetry spans with the attributes every load request carries
(omnitrace/inject/load.py), so verify reads them on the recorder's clock like any other request:
the bad one as kind `input` with `omnitrace.input.variant`, the recovery one as kind `chat` with
`omnitrace.response.keyword_found` when a keyword was asked for.
"""
from __future__ import annotations

import json
import time

import httpx

from omnitrace.inject import marks
from omnitrace.inject.input_variants import build
from omnitrace.inject.load import (RequestResult, RequestShape, finish_span, is_error_object,
                                   has_openai_error_shape, classify_error, request_spec)

INPUT_TIMEOUT_S = 30.0      # the client's patience for the bad request: above input_answer_s (10)
RECOVERY_TIMEOUT_S = 30.0   # = input_recovery_s: a later answer fails the rule anyway
RECOVERY_SHAPE = RequestShape(max_tokens=16)
BODY_HEAD = 160             # bytes of a refusal's body kept on its span: enough to show its shape


def _start_span(url: str, method: str, path: str, kind: str, extra: dict):
    return marks.load_tracer().start_span(f"{method} {path}", attributes=marks.clean({
        "http.request.method": method, "url.full": url + path, "url.path": path,
        "omnitrace.request.kind": kind, **extra}))


def _exchange(method: str, url: str, timeout_s: float, **request) -> tuple:
    """(status, body bytes, end reason) of one request; the body is read whole."""
    try:
        reply = httpx.request(method, url, timeout=httpx.Timeout(timeout_s, connect=5.0),
                              **request)
    except httpx.HTTPError as exc:
        return None, b"", classify_error(exc)
    status = reply.status_code
    reason = "5xx" if status >= 500 else "4xx" if status >= 400 else (
        "error-event" if is_error_object(reply.content) else "completed")
    return status, reply.content, reason


def _request(url: str, kind: str, extra: dict, method: str, path: str, timeout_s: float,
             **request) -> tuple[RequestResult, bytes, object]:
    """One request as a span of `kind`; the span is left open for the caller to finish."""
    span = _start_span(url, method, path, kind, extra)
    start = time.monotonic()
    status, body, reason = _exchange(method, url + path, timeout_s, **request)
    result = RequestResult(0, kind, path, start, time.monotonic(), status, reason, None, len(body),
                           has_openai_error_shape(body) if status is not None and status >= 400 else None)
    return result, body, span


def send_input(url: str, variant: str, model: str | None, scenario: str | None = None,
               server_pid: int | None = None, timeout_s: float = INPUT_TIMEOUT_S) -> RequestResult:
    """The abnormal request of `variant`, inside an `input` mark whose start is the fault time."""
    url = url.rstrip("/")
    bad = build(variant, model)
    context = {**marks.context_from_env(), **{k: v for k, v in (
        ("scenario", scenario), ("server_pid", server_pid)) if v is not None}}
    context.setdefault("server_url", url)
    with marks.span(marks.INPUT_SPAN, marks.input_attributes(variant, **context)):
        result, body, span = _request(url, "input", {"omnitrace.input.variant": variant},
                                      bad.method, bad.path, timeout_s, content=bad.body,
                                      headers=bad.headers())
        if result.status is not None and result.status >= 400:   # the evidence shows the body
            span.set_attribute("omnitrace.response.body_head",
                               body[:BODY_HEAD].decode("utf-8", "replace"))
        finish_span(span, result)
    marks.flush_load()
    marks.flush()
    return result


def keyword_in_answer(body: bytes, keyword: str) -> bool:
    """Whether the chat answer's text holds `keyword` (case-insensitive): upstream's check that
    the server did not only answer, but answered the question."""
    try:
        text = json.loads(body)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return keyword.lower() in text.lower()


def send_recovery(url: str, model: str | None, keyword: str | None = None,
                  timeout_s: float = RECOVERY_TIMEOUT_S) -> tuple[RequestResult, bool | None]:
    """One valid chat request; (its result, whether its answer held `keyword`: None unasked)."""
    url = url.rstrip("/")
    method, path, body = request_spec("chat", model, RECOVERY_SHAPE)
    result, answer, span = _request(url, "chat", {"omnitrace.request.role": "recovery"}, method,
                                    path, timeout_s, json=body)
    found = None
    if keyword is not None and result.end_reason == "completed":
        found = keyword_in_answer(answer, keyword)
    if keyword is not None:   # absent from the span: the answer was never checked
        span.set_attribute("omnitrace.response.keyword", keyword)
        if found is not None:
            span.set_attribute("omnitrace.response.keyword_found", found)
    finish_span(span, result)
    marks.flush_load()
    return result, found
