"""HTTP requests, from spans that follow the OpenTelemetry HTTP conventions (docs/marks.md)."""
from __future__ import annotations

from dataclasses import dataclass

from omnitrace.events import Span

# error.type values that mean the server was not there to answer (docs/marks.md)
CONNECTION_ERRORS = frozenset({"refused", "reset", "closed", "connect_error", "ConnectError",
                               "RemoteProtocolError", "ReadError"})
TIMEOUTS = frozenset({"timeout", "ReadTimeout", "ConnectTimeout", "TimeoutException"})


@dataclass(slots=True)
class Request:
    t: int
    end: int | None          # None: still open when the client stopped (a hang)
    kind: str                # health | chat | chat-stream | speech | other
    method: str
    path: str
    status: int | None
    error_type: str | None
    openai_error: bool | None
    source: str
    ref: int
    origin: str = ""         # scheme://host:port of url.full; "" when the span had no full URL
    variant: str | None = None        # an abnormal input's variant (omnitrace.input.variant)
    keyword_found: bool | None = None  # a recovery answer held the row's keyword; None: not checked
    body_head: str | None = None       # an abnormal request's error body, its first bytes

    @property
    def failed(self) -> bool:
        """An answer the matrix counts as 'unavailable': 5xx, or a connection error (also one
        that cut a stream after its 2xx headers)."""
        return (self.status is not None and self.status >= 500) or (
            self._cut and self.error_type not in TIMEOUTS)

    @property
    def _cut(self) -> bool:
        """An error beyond the status: error.type that only repeats the status code is none."""
        return self.error_type is not None and (self.status is None
                                                or self.error_type != str(self.status))

    @property
    def cut(self) -> bool:
        """The exchange ended in a connection error (before or after a status)."""
        return self._cut

    @property
    def succeeded(self) -> bool:
        """A complete 2xx answer: a stream cut after its headers did not succeed."""
        return self.status is not None and 200 <= self.status < 300 and self.error_type is None

    @property
    def timed_out(self) -> bool:
        return self.error_type in TIMEOUTS

    def outcome(self) -> str:
        if self.end is None:
            return "no answer (still open)"
        if self.status is not None and self._cut:
            return f"HTTP {self.status}, then error {self.error_type}"
        if self.status is not None:
            return f"HTTP {self.status}"
        return f"error {self.error_type or 'unknown'}"

    def describe(self) -> str:
        return f"{self.method} {self.path} ({self.kind})"


def _kind(path: str, attrs: dict) -> str:
    kind = attrs.get("omnitrace.request.kind")
    if kind:
        return str(kind)
    if path.endswith("/health"):
        return "health"
    if "/chat/completions" in path:
        return "chat"
    if "/audio/speech" in path:
        return "speech"
    return "other"


def url_origin(url: str) -> str:
    """'http://127.0.0.1:8000/health' -> 'http://127.0.0.1:8000' (no trailing slash)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ""
    return f"{scheme}://{rest.split('/', 1)[0]}"


def request_from_span(span: Span, ref: int) -> Request | None:
    attrs = span.attributes
    method = attrs.get("http.request.method")
    url = attrs.get("url.full") or ""
    path = attrs.get("url.path")
    if method is None and not url and path is None:
        return None
    if path is None:
        rest = url.split("://", 1)[-1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        path = path.split("?", 1)[0]
    status = attrs.get("http.response.status_code")
    end = span.end if span.end and span.end >= span.t else None
    openai = attrs.get("omnitrace.response.openai_error")
    keyword = attrs.get("omnitrace.response.keyword_found")
    return Request(t=span.t, end=end, kind=_kind(path, attrs), method=str(method or "GET"),
                   path=path, status=int(status) if status is not None else None,
                   error_type=attrs.get("error.type"),
                   openai_error=bool(openai) if openai is not None else None,
                   source=span.source, ref=ref, origin=url_origin(url),
                   variant=attrs.get("omnitrace.input.variant"),
                   keyword_found=bool(keyword) if keyword is not None else None,
                   body_head=attrs.get("omnitrace.response.body_head"))
