"""The application the real servers of the corpus run: the same endpoints as the engine servers,
as an ASGI app (uvicorn --workers 2, gunicorn with uvicorn workers) and a WSGI app (gunicorn
sync). No defect is built in: what these servers do under a fault is their own behaviour.

    python -m uvicorn tests.corpus.apps:asgi --workers 2 --port PORT
    python -m gunicorn -w 2 -b 127.0.0.1:PORT tests.corpus.apps:wsgi
    python -m gunicorn -w 2 -k uvicorn_worker.UvicornWorker -b 127.0.0.1:PORT tests.corpus.apps:asgi
"""
from __future__ import annotations

import asyncio
import time

from tests.corpus import openai_api as api

GENERATION_PATHS = ("/v1/chat/completions", "/v1/audio/speech")


def _route(method: str, path: str) -> str:
    if method == "GET" and path in ("/health", "/v1/models"):
        return path
    if method == "POST" and path in GENERATION_PATHS:
        return "generate"
    return "missing"


# ---- ASGI ----------------------------------------------------------------------------------------
async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    route = _route(scope["method"], scope["path"])
    if route == "/health":
        return await _send_whole(send, 200, b"{}")
    if route == "/v1/models":
        return await _send_whole(send, 200, api.models())
    if route == "missing":
        return await _send_whole(send, 404, api.error("not found", 404))
    request = api.parse(await _read_body(receive))
    tokens = api.token_count(request, scope["path"])
    if not api.wants_stream(request, scope["path"]):
        text = []
        for i in range(tokens):
            await asyncio.sleep(api.TOKEN_S)
            text.append(api.token(i))
        return await _send_whole(send, 200, api.completion("".join(text)))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(tokens):
        await asyncio.sleep(api.TOKEN_S)
        await send({"type": "http.response.body", "body": api.chunk(api.token(i)), "more_body": True})
    await send({"type": "http.response.body", "body": api.DONE})


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _send_whole(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# ---- WSGI ----------------------------------------------------------------------------------------
def wsgi(environ, start_response):
    route = _route(environ["REQUEST_METHOD"], environ["PATH_INFO"])
    if route in ("/health", "/v1/models"):
        return _whole(start_response, 200, b"{}" if route == "/health" else api.models())
    if route == "missing":
        return _whole(start_response, 404, api.error("not found", 404))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    request = api.parse(environ["wsgi.input"].read(length))
    tokens = api.token_count(request, environ["PATH_INFO"])
    if not api.wants_stream(request, environ["PATH_INFO"]):
        time.sleep(api.TOKEN_S * tokens)
        text = "".join(api.token(i) for i in range(tokens))
        return _whole(start_response, 200, api.completion(text))
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    return _stream(tokens)


def _stream(tokens: int):
    for i in range(tokens):
        time.sleep(api.TOKEN_S)
        yield api.chunk(api.token(i))
    yield api.DONE


def _whole(start_response, status: int, body: bytes):
    reason = {200: "OK", 404: "Not Found"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
    return [body]
