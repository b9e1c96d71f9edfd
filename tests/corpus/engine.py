"""The shape every corpus server of our own shares: an API server in front of engine workers, as
vLLM is (an HTTP front process, engine processes started with multiprocessing's spawn method, so
their cmdline holds `multiprocessing.spawn`, the matrix's worker pattern).

The front serves /health, /v1/models, /v1/chat/completions (plain and SSE stream) and
/v1/audio/speech over real HTTP; each generation is sent to an engine over a pipe and its tokens
come back one by one. `Behaviour` is what a server does when something dies or is signalled; the
correct values are its defaults, and each module in tests/corpus/servers/ changes one of them
(its defect). A correct server:

- worker dies: /health answers 503 from then on, every in-flight request fails at once (streams
  are cut, plain requests answer 500), new requests answer 503, the dead worker is reaped;
- SIGTERM/SIGINT to the front: stop accepting, fail in-flight requests, SIGTERM the workers and
  wait for them, exit 0;
- SIGKILL to the front: each worker sees its pipe close and exits.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import wait as wait_any

from tests.corpus import openai_api as api

FAILED = object()   # queued to a request whose generation will never finish
FINISHED = object()


@dataclass(frozen=True)
class Behaviour:
    workers: int = 2
    workers_follow_parent: bool = True   # a worker exits when its pipe to the front closes
    stop_workers_on_term: bool = True    # SIGTERM/SIGINT stops and waits for the workers
    reap_dead_workers: bool = True       # join() a dead worker (else it stays a zombie)
    ignore_sigterm: bool = False         # front and workers set SIGTERM to SIG_IGN
    exit_delay_s: float = 0.0            # after a finished shutdown, before exit(0)
    fail_inflight_on_death: bool = True  # a dead worker fails every open request
    recover_after_s: float | None = None # unavailable this long after a death, then healthy again
    leak_daemon: bool = False            # double-fork a setsid daemon at start, never stopped
    drain_until_second_signal: bool = False  # after stopping to accept, wait for another signal
    sigwait_sigterm: bool = False        # the front blocks SIGTERM and reads it with sigwait (as
                                         # an init does: catatonit, tini), then exits 128+15


# ---- engine worker (its own process) -----------------------------------------------------------
def engine_main(conn, behaviour: Behaviour) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front decides what Ctrl+C means
    signal.signal(signal.SIGTERM, signal.SIG_IGN if behaviour.ignore_sigterm
                  else lambda *_: sys.exit(0))
    send_lock = threading.Lock()
    conn.send(("ready", 0))   # handlers are in place: the front may answer /health 200 now
    while True:
        try:
            request_id, tokens = conn.recv()
        except (EOFError, OSError):
            if behaviour.workers_follow_parent:
                os._exit(0)
            while True:        # the defect: wait for a front that will never come back
                time.sleep(1)
        threading.Thread(target=_generate, args=(conn, send_lock, request_id, tokens),
                         daemon=True).start()


def _generate(conn, send_lock, request_id: int, tokens: int) -> None:
    try:
        for i in range(tokens):
            time.sleep(api.TOKEN_S)
            with send_lock:
                conn.send((request_id, api.token(i)))
        with send_lock:
            conn.send((request_id, None))
    except OSError:
        pass


# ---- the front ---------------------------------------------------------------------------------
class Worker:
    def __init__(self, ctx, index: int, behaviour: Behaviour):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=engine_main, args=(child, behaviour),
                                   name=f"engine-{index}")
        self.process.start()
        child.close()
        self.conn.recv()   # "ready"
        self.alive = True
        self.send_lock = threading.Lock()
        self.open: dict[int, queue.Queue] = {}

    def submit(self, request_id: int, tokens: int, out: queue.Queue) -> None:
        self.open[request_id] = out
        with self.send_lock:
            self.conn.send((request_id, tokens))

    def route(self) -> None:
        """Tokens from the engine to the request that asked for them."""
        while True:
            try:
                request_id, text = self.conn.recv()
            except (EOFError, OSError):
                return
            out = self.open.get(request_id)
            if out is not None:
                out.put(FINISHED if text is None else text)
                if text is None:
                    self.open.pop(request_id, None)


class Front:
    def __init__(self, port: int, behaviour: Behaviour):
        self.behaviour = behaviour
        if behaviour.leak_daemon:
            leak_daemon()   # before any thread or socket exists, as a fork must be
        ctx = multiprocessing.get_context("spawn")
        self.workers = [Worker(ctx, i, behaviour) for i in range(behaviour.workers)]
        self.ids = itertools.count()     # request ids
        self.turns = itertools.count()   # round robin over live workers
        self.unavailable_since: float | None = None
        self.shutting_down = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler_class())
        self.httpd.daemon_threads = True

    # health and admission
    def healthy(self) -> bool:
        if self.shutting_down.is_set():
            return False
        if self.unavailable_since is None:
            return True
        recover = self.behaviour.recover_after_s
        return recover is not None and time.monotonic() - self.unavailable_since >= recover

    def pick_worker(self) -> Worker | None:
        live = [w for w in self.workers if w.alive]
        return live[next(self.turns) % len(live)] if live and self.healthy() else None

    # deaths
    def watch_workers(self) -> None:
        while any(w.alive for w in self.workers):
            sentinels = {w.process.sentinel: w for w in self.workers if w.alive}
            for ready in wait_any(list(sentinels)):
                self.on_death(sentinels[ready])

    def on_death(self, worker: Worker) -> None:
        worker.alive = False
        if self.shutting_down.is_set():
            return
        self.unavailable_since = time.monotonic()
        if self.behaviour.reap_dead_workers:
            worker.process.join()
        if self.behaviour.fail_inflight_on_death:
            self.fail_all()

    def fail_all(self) -> None:
        for w in self.workers:
            for out in list(w.open.values()):
                out.put(FAILED)
            w.open.clear()

    # life
    def run(self) -> None:
        if self.behaviour.sigwait_sigterm:
            # before this process starts a thread, so that none can take it; after the engines
            # started (starting a spawn process here resets the caller's signal mask)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        for w in self.workers:
            threading.Thread(target=w.route, daemon=True).start()
        threading.Thread(target=self.watch_workers, daemon=True).start()
        stop = threading.Event()
        if self.behaviour.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif self.behaviour.sigwait_sigterm:   # blocked since main(): no handler, no delivery
            threading.Thread(target=lambda: (signal.sigwait({signal.SIGTERM}), stop.set()),
                             daemon=True).start()
        else:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        print(f"corpus server ready on port {self.httpd.server_address[1]}", flush=True)
        while not stop.wait(0.2):
            pass
        self.shutdown(stop)

    def shutdown(self, stop: threading.Event) -> None:
        self.shutting_down.set()
        self.httpd.shutdown()
        self.httpd.server_close()        # refuse new connections from here on
        self.fail_all()
        if self.behaviour.drain_until_second_signal:
            stop.clear()
            stop.wait()                  # "draining": only another SIGTERM/SIGINT ends it
        if self.behaviour.stop_workers_on_term:
            for w in self.workers:
                w.process.terminate()
            for w in self.workers:
                w.process.join(5)
        if self.behaviour.exit_delay_s:
            time.sleep(self.behaviour.exit_delay_s)
        # without multiprocessing's atexit join: what was not stopped stays running
        os._exit(128 + signal.SIGTERM if self.behaviour.sigwait_sigterm else 0)

    def handler_class(self):
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # the matrix run keeps the log for failures only
                pass

            def do_GET(self):
                if self.path == "/health":
                    ok = front.healthy()
                    self.reply(200 if ok else 503, b"{}" if ok else api.error("unhealthy", 503))
                elif self.path == "/v1/models":
                    self.reply(200, api.models())
                else:
                    self.reply(404, api.error("not found", 404))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = api.parse(self.rfile.read(length))
                if self.path not in ("/v1/chat/completions", "/v1/audio/speech"):
                    return self.reply(404, api.error("not found", 404))
                worker = front.pick_worker()
                if worker is None:
                    return self.reply(503, api.error("engine unavailable", 503))
                out: queue.Queue = queue.Queue()
                worker.submit(next(front.ids), api.token_count(request, self.path), out)
                if api.wants_stream(request, self.path):
                    self.stream(out)
                else:
                    self.whole(out)

            def stream(self, out: queue.Queue):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                while (item := out.get()) is not FAILED:   # FAILED: cut, no [DONE]
                    self.wfile.write(api.DONE if item is FINISHED else api.chunk(item))
                    self.wfile.flush()
                    if item is FINISHED:
                        return

            def whole(self, out: queue.Queue):
                text = []
                while (item := out.get()) is not FINISHED:
                    if item is FAILED:
                        return self.reply(500, api.error("engine died", 500))
                    text.append(item)
                self.reply(200, api.completion("".join(text)))

            def reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def leak_daemon() -> None:
    """Detach a 'telemetry uploader' the classic way (fork, setsid, fork): its first child exits
    at once, so it is re-parented away from the server and no one ever stops it."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(1)


def main(behaviour: Behaviour) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    Front(parser.parse_args().port, behaviour).run()
