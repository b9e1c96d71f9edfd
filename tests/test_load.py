"""`omnitrace load`: end reasons against a real HTTP server, spans over OTLP, the summary table."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from omnitrace.inject.load import Load, discover_model, request_spec, summary_table
from omnitrace.record.otlp import OtlpReceiver
from omnitrace.record.source import RecordContext
from tests.harness import open_stream


class Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by the request's `model`: ok, fail, cut (reset mid-stream), slow."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body.get("model")
        if model == "fail":
            payload = json.dumps({"error": {"message": "engine dead", "code": 500}}).encode()
            return self._send(500, payload)
        if model == "slow":
            time.sleep(3)
        if self.path == "/v1/audio/speech" and model == "text-only":
            return self._send(404, b'{"detail": "Not Found"}')   # vLLM serving a text model
        if model == "echo":   # the body as the server received it, to check the request's shape
            return self._send(200, json.dumps({"received": body}).encode())
        if model == "engine-died":
            return self._engine_died(body.get("stream"))
        if body.get("stream"):
            open_stream(self)
            if model == "cut":
                time.sleep(0.1)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                self.connection.close()  # RST: what a SIGKILLed server leaves a client with
                return
            self.wfile.write(b"data: [DONE]\n\n")
            return
        self._send(200, b'{"choices": [{"message": {"content": "hi"}}]}')

    def _engine_died(self, stream):
        """What vLLM 0.32 sends when its engine dies under an answered request: for a stream, an
        error event inside the 200 stream and then [DONE] (measured, docs/vllm-cpu-run/)."""
        error = {"error": {"message": "EngineCore encountered an issue.", "type":
                           "InternalServerError", "param": None, "code": 500}}
        if not stream:
            return self._send(200, json.dumps(error).encode())
        open_stream(self)
        self.wfile.write(b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n")

    def do_GET(self):
        if self.path == "/v1/models":
            return self._send(200, b'{"object": "list", "data": [{"id": "Qwen/Qwen3-Omni"}]}')
        self._send(404, b'{"detail": "Not Found"}')

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def run(url, kind, model, requests=2, timeout_s=10.0):
    load = Load(url, kind, rate=50, requests=requests, concurrency=4, timeout_s=timeout_s, model=model)
    return asyncio.run(load.run())


def reasons(results):
    return sorted(r.end_reason for r in results)


def test_completed_chat_and_stream(server):
    assert reasons(run(server, "chat", "ok")) == ["completed"] * 2
    results = run(server, "chat-stream", "ok")
    assert reasons(results) == ["completed"] * 2
    assert all(r.ttfb_s is not None and r.nbytes > 0 for r in results)


def test_5xx_with_openai_error_body(server):
    results = run(server, "speech", "fail")
    assert reasons(results) == ["5xx"] * 2
    assert all(r.status == 500 and r.openai_error for r in results)


def test_stream_reset_midway_is_reset_not_completed(server):
    results = run(server, "chat-stream", "cut")
    assert reasons(results) == ["reset"] * 2
    assert all(r.status == 200 for r in results)


def test_refused_when_nothing_listens():
    with socket.socket() as s:  # bound, never listening: nobody else can take the port meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert reasons(run(f"http://127.0.0.1:{port}", "chat", "ok")) == ["refused"] * 2


def test_timeout_is_bounded_by_the_client_timeout(server):
    t0 = time.monotonic()
    results = run(server, "chat", "slow", requests=1, timeout_s=0.5)
    assert reasons(results) == ["timeout"]
    assert time.monotonic() - t0 < 2.5


def test_rate_and_concurrency_are_respected(server):
    load = Load(server, "chat", rate=10, requests=2, concurrency=1, timeout_s=10, model="slow")
    t0 = time.monotonic()
    results = asyncio.run(load.run())
    # concurrency 1 and 3 s per request: the second cannot start before the first ended
    assert time.monotonic() - t0 >= 5.5
    assert results[1].start >= results[0].end - 0.01


def test_cancel_ends_open_requests_with_cancelled(server):
    load = Load(server, "chat", rate=50, requests=2, concurrency=2, timeout_s=30, model="slow")
    thread = load.run_in_thread()
    assert load.wait_until(lambda l: l.in_flight == 2, 5)
    load.cancel()
    thread.join(5)
    assert not thread.is_alive()
    assert reasons(load.results) == ["cancelled"] * 2


def test_spans_reach_an_otlp_receiver_with_http_attributes(server, tmp_path):
    spans = []
    receiver = OtlpReceiver()
    ctx = RecordContext(emit=spans.append)
    env = {**os.environ, **receiver.prepare(ctx), "PYTHONPATH": os.getcwd()}
    receiver.start(ctx)
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "omnitrace.cli", "load", "--url", server, "--kind", "mix",
             "--rate", "50", "--requests", "3", "--model", "fail"],
            env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "5xx" in cli.stdout and "total" in cli.stdout  # the summary table
        deadline = time.monotonic() + 10
        while len(spans) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        receiver.stop()
    kinds = sorted(s.attributes["omnitrace.request.kind"] for s in spans)
    assert kinds == ["chat", "chat-stream", "speech"]
    for span in spans:
        assert span.attributes["http.response.status_code"] == 500
        assert span.attributes["error.type"] == "500"
        assert span.attributes["http.request.method"] == "POST"
        assert span.end > span.t


def test_summary_table_counts_each_end_reason(server):
    results = run(server, "chat", "ok") + run(server, "chat", "fail", requests=1)
    table = summary_table(results)
    lines = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    assert lines == {"completed": "2", "5xx": "1", "total": "3"}


def test_the_model_comes_from_v1_models_and_none_is_named_when_unknown(server):
    assert discover_model(server) == "Qwen/Qwen3-Omni"
    assert discover_model(server + "/nowhere") is None  # 404
    with socket.socket() as s:  # bound, never listening
        s.bind(("127.0.0.1", 0))
        assert discover_model(f"http://127.0.0.1:{s.getsockname()[1]}") is None  # refused
    assert "model" not in request_spec("chat", None)[2]
    assert "model" not in request_spec("speech", None)[2]
    assert request_spec("chat-stream", "m")[2] == {**request_spec("chat", "m")[2], "stream": True}


def test_an_error_event_inside_a_200_stream_is_a_failure_not_a_completion(server):
    """A 200 stream that reports the engine's death in an event and then [DONE] failed."""
    results = run(server, "chat-stream", "engine-died")
    assert reasons(results) == ["error-event"] * 2
    assert all(r.status == 200 for r in results)


def test_an_error_object_as_a_200_body_is_a_failure(server):
    assert reasons(run(server, "chat", "engine-died")) == ["error-event"] * 2


def test_request_shape_sets_max_tokens_min_tokens_and_ignore_eos(server):
    import httpx
    from omnitrace.inject.load import RequestShape
    shape = RequestShape(max_tokens=400, min_tokens=50, ignore_eos=True)
    _method, path, body = request_spec("chat-stream", "echo", shape)
    received = httpx.post(server + path, json={**body, "stream": False}).json()["received"]
    assert (received["max_tokens"], received["min_tokens"], received["ignore_eos"]) == (400, 50, True)
    assert "min_tokens" not in request_spec("chat", None)[2]
    assert "ignore_eos" not in request_spec("chat", None)[2]


def test_endpoints_the_server_lacks_are_found_before_the_fault(server):
    from omnitrace.inject.probes import absent_endpoints
    assert absent_endpoints(server, ("chat", "chat-stream", "speech"), "text-only") == {"speech": 404}
    assert absent_endpoints(server, ("chat", "speech"), "ok") == {}


def test_mix_load_leaves_out_kinds_without_an_endpoint(server):
    load = Load(server, "mix", rate=50, requests=6, concurrency=4, timeout_s=10, model="ok",
                absent=frozenset({"speech"}))
    assert sorted({r.kind for r in asyncio.run(load.run())}) == ["chat", "chat-stream"]
