"""The API server: a FastAPI app on uvicorn, the root of the testbed's process tree.

Shutdown (SIGTERM/SIGINT), as the real server orders it: the signal first shuts the engine down
("[AsyncOmni] Shutting down", stages one by one), then uvicorn stops accepting, waits for open
connections and runs the lifespan shutdown. A correct server fails in-flight requests at the signal
so that wait is short; with the hang-inflight defect it does not, and uvicorn waits forever.
uvicorn re-raises the signal once it is done, so the exit status is that of the signal's default
action (SIGTERM: killed by signal 15) or, for SIGINT, the CLI's 130.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
import sys
import time

import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from omnitrace.testbed import bad_input, logs
from omnitrace.testbed.config import TestbedConfig
from omnitrace.testbed.orchestrator import EngineUnavailable, Orchestrator, Request

log = logging.getLogger("api_server.py")


class StreamAborted(Exception):
    """Raised inside a streaming body to drop the connection: the client must see a failure, and
    a 200 stream that simply ends would read as success."""


class _QuietAbort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamAborted))


def error_body(status: int, message: str, code) -> JSONResponse:
    kind = ("InternalServerError" if status >= 500 else
            "NotFoundError" if status == 404 else "BadRequestError")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("testbed_requests", "HTTP requests by endpoint and final status",
                                ["endpoint", "status"], registry=self.registry)
        self.in_flight = Gauge("testbed_requests_in_flight", "requests being served",
                               registry=self.registry)
        self.stage_alive = Gauge("testbed_stage_alive", "1 while the stage process is alive",
                                 ["stage", "title"], registry=self.registry)
        self.engine_oom = Gauge("testbed_engine_oom", "1 while a stage cannot allocate",
                                registry=self.registry)


def build_app(config: TestbedConfig, orch: Orchestrator) -> FastAPI:
    metrics = Metrics()
    videos: dict[str, dict] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await orch.start()
        yield
        await orch.begin_shutdown()

    app = FastAPI(lifespan=lifespan)

    def finish(endpoint: str, status) -> None:
        metrics.requests.labels(endpoint, str(status)).inc()

    def refuse(endpoint: str, exc: EngineUnavailable) -> JSONResponse:
        finish(endpoint, exc.status)
        return error_body(exc.status, exc.message, exc.code)

    async def first_event(req: Request):
        try:
            return await req.events.get()
        except asyncio.CancelledError:
            orch.abort(req)
            raise

    async def stream(endpoint: str, req: Request, first, encode, trailer: bytes = b"",
                     sse: bool = False):
        """Body of a streaming response; `first` was already taken off the queue. An engine
        failure mid-stream ends an SSE stream as vLLM 0.32 does (measured): an error event, then
        `data: [DONE]`, a clean end; a raw audio stream has no way to say it, so it is cut."""
        event, status = first, "aborted"
        try:
            while event[0] != "done":
                if event[0] == "error":
                    yield encode(event)
                    log.error("request %s failed mid-stream: %s", req.rid, event[2])
                    if not sse:
                        raise StreamAborted(event[2])
                    yield b"data: [DONE]\n\n"
                    status = event[1]
                    return
                yield encode(event)
                event = await req.events.get()
            yield trailer
            status = 200
        finally:
            orch.abort(req)
            metrics.in_flight.dec()
            finish(endpoint, status)

    @app.get("/health")
    async def health():
        ok, why = orch.health()
        return Response(status_code=200) if ok else error_body(503, why, "unhealthy")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model, "object": "model",
                                            "owned_by": "omnitrace-testbed"}]}

    def unknown_model(endpoint: str, body: dict) -> JSONResponse | None:
        """vLLM answers 404 for a model it does not serve; no model at all means the served one."""
        asked = body.get("model")
        if asked is None or asked == config.model:
            return None
        finish(endpoint, 404)
        return error_body(404, f"The model `{asked}` does not exist.", 404)

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest):
        endpoint = "/v1/chat/completions"
        body = await bad_input.read_chat_body(http, config.model, config.defects, orch.crash_stage)
        if isinstance(body, Response):   # refused as vLLM refuses it (bad_input.py)
            finish(endpoint, body.status_code)
            return body
        modalities = body.get("modalities") or ["text"]
        audio = "audio" in modalities
        if audio and config.topology != "qwen3-omni":
            finish(endpoint, 400)
            return error_body(400, f"{config.model} cannot produce audio", "invalid_modality")
        route = [0, 1, 2] if audio else [0]
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 64)
        try:
            req = orch.submit(route, n, wants_text=True, wants_audio=audio)
        except EngineUnavailable as exc:
            return refuse(endpoint, exc)
        metrics.in_flight.inc()
        first = await first_event(req)
        created, rid = int(time.time()), f"chatcmpl-{req.rid}"
        if first[0] == "error":
            metrics.in_flight.dec()
            finish(endpoint, first[1])
            return error_body(first[1], first[2], "engine_error")
        if body.get("stream"):
            def encode(event) -> bytes:
                if event[0] == "error":
                    payload = {"error": {"message": event[2], "type": "InternalServerError",
                                         "code": event[1]}}
                else:
                    delta = ({"content": event[1]} if event[0] == "text"
                             else {"audio": {"data": base64.b64encode(event[1]).decode()}})
                    payload = {"id": rid, "object": "chat.completion.chunk", "created": created,
                               "model": config.model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                return f"data: {json.dumps(payload)}\n\n".encode()
            done = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": config.model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            trailer = f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode()
            return StreamingResponse(stream(endpoint, req, first, encode, trailer, sse=True),
                                     media_type="text/event-stream")
        text, pcm, event = [], [], first
        try:
            while event[0] not in ("done", "error"):
                (text if event[0] == "text" else pcm).append(event[1])
                event = await req.events.get()
        finally:
            orch.abort(req)
            metrics.in_flight.dec()
        if event[0] == "error":
            finish(endpoint, event[1])
            return error_body(event[1], event[2], "engine_error")
        finish(endpoint, 200)
        message = {"role": "assistant", "content": "".join(text)}
        if audio:
            message["audio"] = {"data": base64.b64encode(b"".join(pcm)).decode()}
        return {"id": rid, "object": "chat.completion", "created": created, "model": config.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"completion_tokens": len(text)}}

    @app.post("/v1/audio/speech")
    async def speech(http: HttpRequest):
        endpoint = "/v1/audio/speech"
        body = await http.json()
        if refused := unknown_model(endpoint, body):
            return refused
        if config.topology != "qwen3-omni":
            finish(endpoint, 400)
            return error_body(400, f"{config.model} cannot produce speech", "invalid_model")
        words = str(body.get("input", "")).split()
        oom_status = 400 if config.has("speech-400-under-oom") else 500
        try:
            req = orch.submit([1, 2], max(4, min(2 * len(words), 400)), wants_text=False,
                              wants_audio=True, oom_status=oom_status)
        except EngineUnavailable as exc:
            return refuse(endpoint, exc)
        metrics.in_flight.inc()
        first = await first_event(req)
        if first[0] == "error":
            metrics.in_flight.dec()
            finish(endpoint, first[1])
            return error_body(first[1], first[2], "engine_error")
        # A WAV header of unknown length (0xFFFFFFFF), as streaming TTS servers send.
        header = (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " +
                  struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) +
                  b"data" + struct.pack("<I", 0xFFFFFFFF))

        def encode(event) -> bytes:
            return event[1] if event[0] == "audio" else b""

        async def body_with_header():
            yield header
            async for chunk in stream(endpoint, req, first, encode):
                yield chunk
        return StreamingResponse(body_with_header(), media_type="audio/wav")

    @app.post("/v1/videos")
    async def create_video(http: HttpRequest):
        endpoint = "/v1/videos"
        body = await http.json()
        try:
            req = orch.submit([0], int(body.get("num_frames") or 32), wants_text=True,
                              wants_audio=False)
        except EngineUnavailable as exc:
            return refuse(endpoint, exc)
        job = videos[req.rid] = {"id": req.rid, "object": "video", "status": "queued"}

        async def render():
            metrics.in_flight.inc()
            try:
                while (event := await req.events.get())[0] not in ("done", "error"):
                    job["status"] = "in_progress"
                job["status"] = "completed" if event[0] == "done" else "failed"
                if event[0] == "error":
                    job["error"] = {"message": event[2], "code": event[1]}
                finish(endpoint, 200 if event[0] == "done" else event[1])
            finally:
                metrics.in_flight.dec()
        job_task = asyncio.get_running_loop().create_task(render())
        job_task.add_done_callback(lambda _: None)
        return dict(job)

    @app.get("/v1/videos/{video_id}")
    async def get_video(video_id: str):
        if video_id not in videos:
            return error_body(404, f"no video {video_id}", "not_found")
        return videos[video_id]

    @app.get("/metrics")
    async def prometheus():
        for stage in orch.stages:
            metrics.stage_alive.labels(str(stage.spec.index), stage.spec.title).set(int(stage.alive))
        metrics.engine_oom.set(int(bool(orch.oom_stages())))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class TestbedServer(uvicorn.Server):
    """uvicorn's Server with the engine shut down at the signal, and a READY line once serving."""

    def __init__(self, config: uvicorn.Config, orch: Orchestrator, gpu: str):
        super().__init__(config)
        self.orch, self.gpu = orch, gpu
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        self.orch.on_fatal = self._fatal
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            stages = ",".join(str(s.process.pid) for s in self.orch.stages)
            print(f"READY http://{self.config.host}:{port} pid={os.getpid()} stages={stages} "
                  f"gpu={self.gpu}", flush=True)

    def handle_exit(self, sig, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self.orch.begin_shutdown)

    def _fatal(self) -> None:
        log.error("A stage failed fatally; the server exits")
        self.exit_code = 1
        self.should_exit = True
        self.orch.begin_shutdown()


def serve(host: str, port: int, config: TestbedConfig, orch: Orchestrator, gpu: str) -> int:
    """Run until shut down; returns the exit status (a signal may end the process first)."""
    uv_config = uvicorn.Config(build_app(config, orch), host=host, port=port, lifespan="on",
                               access_log=False, log_config=logs.uvicorn_log_config(),
                               timeout_graceful_shutdown=None)
    logging.getLogger("uvicorn.error").addFilter(_QuietAbort())   # after Config's dictConfig
    server = TestbedServer(uv_config, orch, gpu)
    server.run()
    if not server.started:
        print("testbed: the server did not start (see the log above)", file=sys.stderr)
        return 3
    return server.exit_code
