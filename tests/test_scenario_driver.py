"""The scenario driver's load phase: it injects only while a stream is open, and says plainly
when a fast server answers every request before one can be caught in flight."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from omnitrace.inject.load import RequestShape
from omnitrace.inject.scenario import Driver, Plan
from omnitrace.inject.server import ServerFailed
from tests.harness import open_stream


class Handler(BaseHTTPRequestHandler):
    """Answers a stream at once, unless max_tokens asks for more than 100 tokens: then it sends
    one event and holds the stream open until the test releases it."""
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        open_stream(self)
        if body.get("max_tokens", 0) > 100:
            self.release.wait(30)
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Handler.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()


def driver(url, shape):
    plan = Plan(row="under-load/sigkill/serve", fault="SIGKILL", target="serve", load=True,
                observe_s=10, serve="true", port=0, url=url, load_kind="chat-stream",
                load_rate=50, load_requests=3, load_concurrency=3, shape=shape,
                in_flight_timeout_s=20)
    d = Driver(plan)
    d.model = "m"
    return d


def test_a_server_that_never_streams_is_reported_not_injected():
    """Every request ends before a stream opens (here: nothing listens): the driver refuses to
    inject under a load that is not there, and says why."""
    from omnitrace.inject.server import free_port
    d = driver(f"http://127.0.0.1:{free_port()}", RequestShape(max_tokens=8))
    with pytest.raises(ServerFailed, match="no request was in flight.*3 of 3 load requests ended"):
        d.start_load()
    assert sorted(r.end_reason for r in d.load.results) == ["refused"] * 3


def test_longer_requests_are_caught_in_flight(server):
    d = driver(server, RequestShape(max_tokens=400, ignore_eos=True))
    d.start_load()                      # returns only while a stream is open
    assert d.load.streaming >= 1
    Handler.release.set()
    d.load_thread.join(20)
    assert sorted(r.end_reason for r in d.load.results) == ["completed"] * 3


def test_a_server_that_never_says_200_is_reported_with_what_it_answered(tmp_path):
    """A plain web service whose /health answers 503 forever: the start-up failure names the
    statuses and the last body, not only the timeout."""
    from omnitrace.inject.server import Server, free_port
    port = free_port()
    app = tmp_path / "app.py"
    app.write_text(
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = b'warming up: model not loaded'\n"
        "        self.send_response(503); self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers(); self.wfile.write(body)\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
    server = Server([sys.executable, str(app), str(port)], f"http://127.0.0.1:{port}")
    server.start()
    try:
        # long enough for the app to start and answer at least once on a busy machine
        with pytest.raises(ServerFailed) as failure:
            server.wait_healthy(15)
    finally:
        server.stop()
    message = str(failure.value)
    assert "did not answer 200 within 15 s" in message
    assert "503 x" in message and "warming up: model not loaded" in message


def test_only_requests_opened_before_the_fault_count_as_in_flight(server):
    """A request the load starts after the signal is not one the fault hit."""
    d = driver(server, RequestShape(max_tokens=400))
    d.plan.load_requests = 1
    d.start_load()
    fault_t = time.monotonic()
    (start,) = d.load._open.values()
    assert d.load.open_at(fault_t) == 1 and d.load.open_at(start) == 0
    d.check_in_flight(fault_t)                          # a request was open: no complaint
    with pytest.raises(ServerFailed, match="no request was in flight at the fault"):
        d.check_in_flight(start)                        # nothing had started by then
    Handler.release.set()
    d.load_thread.join(20)
    assert d.load.open_at(fault_t) == 1                 # still counted once it has ended


def test_a_server_with_no_openai_endpoints_is_told_apart_from_a_broken_one(tmp_path):
    """A health-only web service under an under-load row: the run says once which request kinds
    do not apply, injects with nothing in flight instead of failing the row, and the in-flight
    rule says why it cannot be decided; no 404 is counted as the server's answer to the fault."""
    from tests.harness import matrix_run
    app = Path(__file__).parent / "servers" / "health_only.py"
    cli, report = matrix_run(tmp_path / "run", "--serve", f"{sys.executable} {app} {{port}}",
                             "--scenarios", "under-load/sigkill/serve")
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-3000:]
    log = (tmp_path / "run" / "under-load_sigkill_serve.log").read_text()
    assert "/v1/chat/completions answered 404 before the fault: chat requests do not apply" in log
    assert "no load request kind applies to this server" in log
    (scenario,) = report["scenarios"]
    rules = {r["id"]: r for r in scenario["rules"]}
    assert rules["inflight-fail-fast"]["verdict"] == "inconclusive"
    assert "no endpoint for load" in rules["inflight-fail-fast"]["summary"]
    assert rules["target-exits"]["verdict"] == "pass"
    assert rules["service-unavailable"]["verdict"] == "pass"
