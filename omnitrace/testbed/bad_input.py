"""How the testbed's /v1/chat/completions reads a request body, and refuses a bad one, as real vLLM
0.32 (FastAPI 0.136, starlette 1.10) answered each abnormal-input variant when measured
(docs/vllm-cpu-run/abnormal-input.md):

| variant | vLLM's answer |
| --- | --- |
| malformed-json | 400, OpenAI body, `json_invalid` validation error |
| messages-wrong-type | 400, OpenAI body, `list_type` at `body.messages` |
| unknown-model | 404 NotFoundError "The model `X` does not exist." |
| empty-body | 400, OpenAI body, `missing` at `body` |
| wrong-content-type | 400, OpenAI body, "Unsupported Media Type" |
| invalid-utf8 | 400 with FastAPI's own body `{"detail": "There was an error parsing the body"}` |
| oversized (10 MiB) | 400 BadRequestError, the prompt is over the context length |

vLLM's invalid-utf8 answer breaks its own error contract (every other refusal has the OpenAI
shape): FastAPI refuses that body before vLLM's handlers see it. The correct testbed answers it
with the OpenAI shape; the `fastapi-error-body` defect answers it as vLLM does, so with that defect
the testbed answers every variant exactly as measured. The other two defects change every
refusal: `500-on-bad-input` answers 500 (a handler that raised), and `crash-on-bad-input` hands
the bad request to the engine, whose first stage dies of it.
"""
from __future__ import annotations

import json
from typing import Callable

from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

# vLLM's CPU check: a prompt over max_model_len * 13 characters is refused before tokenizing
CHARS_PER_TOKEN_BOUND = 13
MAX_MODEL_LEN = 32768
PARSE_ERROR = "There was an error parsing the body"


class Refusal(Exception):
    def __init__(self, status: int, message: str, kind: str = "Bad Request", param=None,
                 by_fastapi: bool = False):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.by_fastapi = (
            status, message, kind, param, by_fastapi)


def _validation(kind: str, loc: str, msg: str, value) -> Refusal:
    detail = {"type": kind, "loc": loc, "msg": msg, "input": value}
    return Refusal(400, f"1 validation error:\n  {detail}", param=loc)


def parse(content_type: str, raw: bytes, served_model: str) -> dict:
    """The request body as a dict, or a Refusal as vLLM would answer it."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise Refusal(400, "1 validation error:\n  Unsupported Media Type: Only "
                      "'application/json' is allowed")
    if not raw:
        raise _validation("missing", "body", "Field required", "None")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, PARSE_ERROR, by_fastapi=True) from None   # before vLLM's handlers
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _validation("json_invalid", f"body.{exc.pos}", "JSON decode error",
                          "<dict of 0 items>") from None
    _check_fields(body, served_model)
    return body


def _check_fields(body, served_model: str) -> None:
    if not isinstance(body, dict):
        raise _validation("model_attributes_type", "body", "Input should be a valid dictionary "
                          "or object", str(body)[:80])
    if not isinstance(body.get("messages"), list):
        raise _validation("list_type", "body.messages", "Input should be a valid list",
                          str(body.get("messages"))[:80])
    asked = body.get("model")
    if asked is not None and asked != served_model:   # none at all means the served one
        raise Refusal(404, f"The model `{asked}` does not exist.", "NotFoundError", "model")
    chars = sum(len(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict))
    bound = MAX_MODEL_LEN * CHARS_PER_TOKEN_BOUND
    if chars > bound:
        raise Refusal(400, f"This model's maximum context length is {MAX_MODEL_LEN} tokens. "
                      f"However, your prompt contains {chars} characters (more than {bound} "
                      f"characters, which is the upper bound for {MAX_MODEL_LEN} input tokens). "
                      "Please reduce the length of the input prompt.", "BadRequestError",
                      "input_text")


def answer(refusal: Refusal, defects: frozenset[str]) -> JSONResponse:
    """The refusal as vLLM sends it, or as a defect bends it."""
    if "500-on-bad-input" in defects:
        return JSONResponse({"error": {"message": f"Internal Server Error: {refusal.message}",
                                       "type": "InternalServerError", "code": 500}}, 500)
    if "fastapi-error-body" in defects and refusal.by_fastapi:
        return JSONResponse({"detail": refusal.message}, refusal.status)
    return JSONResponse({"error": {"message": refusal.message, "type": refusal.kind,
                                   "param": refusal.param, "code": refusal.status}},
                        refusal.status)


async def read_chat_body(http: HttpRequest, served_model: str, defects: frozenset[str],
                         crash: Callable[[str], None]) -> dict | JSONResponse:
    """The parsed body, or the response that refuses it. With crash-on-bad-input the bad body
    reaches the engine instead (`crash`), and the client gets the 500 a dying engine gives."""
    try:
        return parse(http.headers.get("content-type", ""), await http.body(), served_model)
    except Refusal as refusal:
        if "crash-on-bad-input" in defects:
            crash(refusal.message)
            return JSONResponse({"error": {"message": "EngineCore encountered an issue. See "
                                           "stack trace for the root cause.",
                                           "type": "InternalServerError", "code": 500}}, 500)
        return answer(refusal, defects)
