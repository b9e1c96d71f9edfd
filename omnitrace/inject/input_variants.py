"""The abnormal requests of the `fault: input` rows: what each variant sends, byte for byte.

vLLM-Omni's reliability suite (tests/dfx/reliability, its data-driven abnormal-input scenarios)
sends malformed JSON and a wrong-typed `messages` raw to /v1/chat/completions; the other variants
cover the rest of what a client can get wrong about a request (docs/matrix-run.md). Every variant
goes to the chat endpoint, and every one is wrong in exactly one way: the rest of the request is
the valid one the recovery request sends, so a rejection is about that one fault.

Plain data and the standard library only: the matrix loader imports VARIANTS to check rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

PATH = "/v1/chat/completions"
JSON = "application/json"
PROMPT = "Reply with one short sentence."
UNKNOWN_MODEL = "omnitrace-no-such-model"
# Above what an API gateway typically admits (nginx's default is 1 MiB, many set 10 MiB) and far
# above any model's context: a server must refuse it without falling over.
OVERSIZED_BYTES = 10 << 20


@dataclass(frozen=True)
class AbnormalRequest:
    variant: str
    method: str
    path: str
    content_type: str | None    # None: no Content-Type header at all
    body: bytes

    def headers(self) -> dict[str, str]:
        return {"content-type": self.content_type} if self.content_type else {}


def _valid(model: str | None, **changes) -> dict:
    body: dict = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    if model is not None:
        body["model"] = model
    body.update(changes)
    return body


def _encode(body: dict) -> bytes:
    return json.dumps(body).encode()


def malformed_json(model):
    return JSON, _encode(_valid(model))[:-1]            # the closing brace is missing


def messages_wrong_type(model):
    return JSON, _encode(_valid(model, messages=PROMPT))   # a string where a list belongs


def unknown_model(model):
    return JSON, _encode(_valid(UNKNOWN_MODEL))


def empty_body(model):
    return JSON, b""


def wrong_content_type(model):
    return "text/plain", _encode(_valid(model))       # valid JSON, declared as plain text


def invalid_utf8(model):
    # JSON is UTF-8 (RFC 8259); \xff and \xfe can start no UTF-8 sequence
    head, tail = _encode(_valid(model, messages=[{"role": "user", "content": "@@"}])).split(b"@@")
    return JSON, head + b"\xff\xfe" + tail


def oversized(model):
    filler = "a " * (OVERSIZED_BYTES // 2)
    return JSON, _encode(_valid(model, messages=[{"role": "user", "content": filler}]))


VARIANTS = {"malformed-json": malformed_json, "messages-wrong-type": messages_wrong_type,
            "unknown-model": unknown_model, "empty-body": empty_body,
            "wrong-content-type": wrong_content_type, "invalid-utf8": invalid_utf8,
            "oversized": oversized}


def build(variant: str, model: str | None) -> AbnormalRequest:
    """The request of `variant`, naming `model` (the served one, from GET /v1/models) where the
    variant does not change it. KeyError for an unknown variant (callers check VARIANTS)."""
    content_type, body = VARIANTS[variant](model)
    return AbnormalRequest(variant, "POST", PATH, content_type, body)
