"""The slice of the OpenAI HTTP API that omnitrace's load and probes use, shared by every corpus
server: what /v1/models lists and how a generation is framed (a JSON body, or SSE chunks ending in
`data: [DONE]`). Generation is paced so that a request is still in flight when a fault lands."""
from __future__ import annotations

import json

MODEL = "corpus-model"
TOKEN_S = 0.05          # one token every 50 ms
MAX_TOKENS = 48         # so a request lasts at most 2.4 s
SPEECH_TOKENS = 12


def models() -> bytes:
    return json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def token_count(request: dict, path: str) -> int:
    if path.endswith("/audio/speech"):
        return SPEECH_TOKENS
    asked = request.get("max_tokens") or MAX_TOKENS
    return max(1, min(int(asked), MAX_TOKENS))


def wants_stream(request: dict, path: str) -> bool:
    return path.endswith("/chat/completions") and bool(request.get("stream"))


def token(i: int) -> str:
    return f"tok{i} "


def completion(text: str) -> bytes:
    return json.dumps({"object": "chat.completion", "model": MODEL, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]}
    ).encode()


def chunk(text: str) -> bytes:
    body = {"object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def error(message: str, code: int) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error", "code": code}}).encode()


def parse(body: bytes) -> dict:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
