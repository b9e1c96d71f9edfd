"""The health prober against real servers: each probe a span with its status or its failure kind,
the URL discovered from the traced process's listening port and followed when it moves."""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from omnitrace.inject.server import free_port
from omnitrace.record.http import HealthProber, make_http_sources
from omnitrace.record.otlp import OtlpReceiver
from tests.harness import SourceRun

# A server that turns unhealthy on SIGUSR1 and moves to a new port on SIGUSR2; it prints each port.
SERVER = textwrap.dedent("""
    import signal, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    state = {"code": 200}
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"{}"
            self.send_response(state["code"] if self.path == "/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    def serve():
        server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(server.server_address[1], flush=True)
        return server
    servers = [serve()]
    def unhealthy(*_):
        state["code"] = 503
    def move(*_):
        old = servers[-1]
        servers.append(serve())
        old.shutdown()
        old.server_close()
    signal.signal(signal.SIGUSR1, unhealthy)
    signal.signal(signal.SIGUSR2, move)
    while True:
        signal.pause()
""")


@pytest.fixture
def server():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    proc.first_port = int(proc.stdout.readline())
    yield proc
    proc.kill()
    proc.wait()


def status_of(span):
    return span.attributes.get("http.response.status_code")


def test_probes_see_200_turn_503_then_refused(tmp_path, server):
    url = f"http://127.0.0.1:{server.first_port}/health"
    with SourceRun(tmp_path, HealthProber(url)) as rec:
        rec.wait_for_event("span", lambda s: status_of(s) == 200, what="a 200")
        time.sleep(1.0)
        server.send_signal(signal.SIGUSR1)
        rec.wait_for_event("span", lambda s: status_of(s) == 503, what="a 503")
        server.kill()
        server.wait()
        killed_t = time.monotonic_ns()
        refused = rec.wait_for_event("span", lambda s: s.attributes.get("error.type") == "refused",
                                    what="refused")
        timeline = rec.finish()

    spans = list(timeline.of_kind("span"))
    assert all(s.source == "probe" and s.name == "GET" for s in spans)
    assert all(s.attributes["url.full"] == url for s in spans)
    assert all(s.attributes["omnitrace.request.kind"] == "health" for s in spans)
    ok = [s for s in spans if status_of(s) == 200]
    unhealthy = [s for s in spans if status_of(s) == 503]
    assert ok and unhealthy and max(s.t for s in ok) < min(s.t for s in unhealthy)
    assert all(s.status == "error" and "error.type" not in s.attributes for s in unhealthy)
    assert all(s.status == "unset" for s in ok)
    # 20 Hz: the first refusal comes within a few periods of the kill (not half a second later).
    assert refused.t - killed_t < 0.5e9
    assert all(s.t <= s.end for s in spans)
    # the one second of steady 200s holds about 20 probes: never more (the schedule does not
    # catch up after a stall), and well above a 2 Hz poll's even on a loaded machine
    steady = [s for s in ok if s.t >= ok[0].t and s.t < ok[0].t + 1e9]
    assert 5 <= len(steady) <= 22


def test_a_server_that_never_answers_reads_as_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
        with SourceRun(tmp_path, HealthProber(url, timeout_s=0.2)) as rec:
            span = rec.wait_for_event("span", lambda s: True)
    finally:
        silent.close()
    assert span.attributes["error.type"] == "timeout" and span.status == "error"
    assert 0.2e9 <= span.end - span.t < 2e9
    assert "http.response.status_code" not in span.attributes


@pytest.mark.parametrize("abort", [True, False], ids=["rst", "closed-without-answer"])
def test_a_connection_dropped_without_an_answer_reads_as_reset(tmp_path, abort):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def abort_every_connection():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(1024)
            if abort:  # linger 0: the kernel answers with RST, as for a killed server
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=abort_every_connection, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/health"
        with SourceRun(tmp_path, HealthProber(url)) as rec:
            span = rec.wait_for_event("span", lambda s: True)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert span.attributes["error.type"] == "reset"


def test_url_is_discovered_from_the_traced_server_and_followed_when_it_moves(tmp_path, server):
    with SourceRun(tmp_path, HealthProber(None), root_pid=server.pid) as rec:
        first = rec.wait_for_event("span", lambda s: status_of(s) == 200, what="a probe on the first port")
        server.send_signal(signal.SIGUSR2)
        second_port = int(server.stdout.readline())
        moved = rec.wait_for_event("span", 
            lambda s: s.attributes["url.full"].endswith(f":{second_port}/health")
            and status_of(s) == 200, what="a probe on the new port")
        timeline = rec.finish()
    assert first.attributes["url.full"] == f"http://127.0.0.1:{server.first_port}/health"
    assert moved.t > first.t
    found = [e.line for e in timeline.of_kind("log")]
    assert len(found) == 2 and all(f"(pid {server.pid} listens there)" in line for line in found)
    assert timeline.footer["health"]["servers_found"] == 2


def test_wiring_gives_the_receiver_and_a_discovering_prober():
    sources = make_http_sources(None)
    assert [type(s) for s in sources] == [OtlpReceiver, HealthProber]
    assert sources[1].discover
    assert make_http_sources("http://127.0.0.1:1/health", otlp=False)[0].url.endswith(":1/health")
    assert make_http_sources(None, health=False, otlp=False) == []


def test_testbed_health_turns_503_or_refused_when_a_stage_is_killed(tmp_path):
    from omnitrace.testbed.harness import running_testbed  # the system under test, on the sim

    with running_testbed([], sim_dir=tmp_path / "gpu") as tb, \
            SourceRun(tmp_path, HealthProber(None), root_pid=tb.pid) as rec:
        rec.wait_for_event("span", lambda s: status_of(s) == 200, what="the testbed healthy")
        kill_t = time.monotonic_ns()
        os.kill(tb.stage_pids[1], signal.SIGKILL)
        turned = rec.wait_for_event("span", 
            lambda s: s.t > kill_t and (status_of(s) == 503
                                        or s.attributes.get("error.type") == "refused"),
            what="503 or refused")
        timeline = rec.finish()

    assert turned.attributes["url.full"] == tb.url + "/health"  # discovered from its port
    before = [s for s in timeline.of_kind("span") if s.end < kill_t]
    assert before and all(status_of(s) == 200 for s in before)
    # The matrix allows 20 s; at 20 Hz the prober sees the change within a few probes of the
    # testbed noticing its dead stage.
    assert turned.t - kill_t < 5e9, f"health turned {(turned.t - kill_t) / 1e6:.0f} ms after kill"


# Serves until the recorder's prober has asked /health six times, then exits.
PROBED_SIX_TIMES = textwrap.dedent("""
    import sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    hits = []
    class Health(BaseHTTPRequestHandler):
        def log_message(self, *args): pass
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
            hits.append(self.path)
            if hits.count("/health") == 6:
                threading.Thread(target=server.shutdown).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
    server.serve_forever()
""")


def record_with_health_rate(tmp_path, rate: str, command: list[str], port: int):
    from omnitrace.timeline import read_timeline
    path = tmp_path / f"rate-{rate}.jsonl"
    cli = subprocess.run([sys.executable, "-m", "omnitrace.cli", "record", "-o", str(path),
                          "--no-bpf", "--gpu", "off", "--no-otlp", "--health-rate", rate,
                          "--health-url", f"http://127.0.0.1:{port}/health", "--", *command],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    return read_timeline(path)


def test_health_rate_is_the_probing_rate_and_is_in_the_header(tmp_path):
    from omnitrace.inject.server import free_port
    port = free_port()
    timeline = record_with_health_rate(tmp_path, "5", [sys.executable, "-c", PROBED_SIX_TIMES,
                                                       str(port)], port)
    assert timeline.header["health_rate_hz"] == 5
    assert timeline.header["sources"]["health"]["hz"] == 5
    starts = [e.t for e in timeline.events if e.kind == "span" and e.source == "probe"]
    assert len(starts) >= 6
    # never faster than asked (a late probe may make a gap longer, never shorter)
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.19e9


def test_health_rate_0_turns_the_prober_off_and_says_so(tmp_path):
    timeline = record_with_health_rate(tmp_path, "0", [sys.executable, "-c", "pass"], 1)
    assert timeline.header["health_rate_hz"] == 0
    assert "health" not in timeline.header["sources"]
    assert not [e for e in timeline.events if e.kind == "span" and e.source == "probe"]


def announce(endpoint: str, base_url: str, pid: int) -> None:
    """What marks.announce_server sends: an omnitrace.server span (OTLP/JSON here)."""
    attributes = [{"key": "omnitrace.server.url", "value": {"stringValue": base_url}},
                  {"key": "omnitrace.server.pid", "value": {"intValue": str(pid)}}]
    now = time.time_ns()
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "name": "omnitrace.server", "startTimeUnixNano": str(now), "endTimeUnixNano": str(now),
         "attributes": attributes}]}]}]}
    assert httpx.post(endpoint, json=body).status_code == 200


def test_an_announced_url_wins_over_the_given_one(tmp_path, server):
    """The driver and the plugin announce where their server answers (a container's host port is
    known only once it runs): the prober leaves --health-url for it, and says so."""
    nobody = f"http://127.0.0.1:{free_port()}/health"
    base = f"http://127.0.0.1:{server.first_port}"
    receiver = OtlpReceiver()
    with SourceRun(tmp_path, HealthProber(nobody)) as rec:
        endpoint = receiver.prepare(rec.ctx)["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        receiver.start(rec.ctx)
        try:
            rec.wait_for_event("span", lambda s: s.attributes.get("error.type") == "refused",
                               what="a refused probe at the given URL")
            announce(endpoint, base, server.pid)
            answered = rec.wait_for_event("span", lambda s: status_of(s) == 200,
                                          what="a probe at the announced URL")
        finally:
            receiver.stop()
        timeline = rec.finish()
    assert answered.attributes["url.full"] == base + "/health"
    [log] = timeline.of_kind("log")
    assert log.pid == server.pid and log.line == \
        f"health prober: probing {base}/health (announced by the traced command)"
