"""A small real server with one worker process and switchable defects, for the matrix runner's
tests: real fork, real signals, real HTTP (stdlib only, plus setproctitle for the worker's title).

    python mini_server.py --port P [--worker-title T] [--flap-after S] [--daemon double-fork|setsid]

- The root serves /health (200 while its worker lives, else 503), /v1/models and
  /v1/chat/completions (200 while the worker lives, else 503). SIGTERM/SIGINT: it stops its worker,
  reaps it and exits 0.
- The worker is a forked child titled --worker-title (default "VLLM::MiniWorker"); it exits on
  SIGTERM, dies of SIGKILL, and dies with the root (PR_SET_PDEATHSIG); the root reaps it.
Defects:
- --flap-after S: S seconds after the worker died, /health answers 200 again (a health endpoint
  that flaps back: the service did not stay unavailable).
- --daemon double-fork: at start the root forks a child that forks the daemon and exits at once,
  so the daemon is re-parented away from the root before any fault; it never exits by itself.
  --daemon setsid: the same, and the daemon also calls setsid (a new session, as daemons do).
Every process is bounded by --lifetime seconds (default 300) so a failed test leaks nothing for long.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--worker-title", default="VLLM::MiniWorker")
    ap.add_argument("--flap-after", type=float, default=None)
    ap.add_argument("--daemon", choices=["double-fork", "setsid"], default=None)
    ap.add_argument("--lifetime", type=float, default=300.0)
    ap.add_argument("--request-log", default=None,
                    help="append 'PATH before|after' per request (before or after the worker died)")
    ap.add_argument("--tag", default="", help="ignored: lets a test find its processes by cmdline")
    return ap.parse_args()


def live_until(deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(0.2)
    os._exit(0)


def fork_worker(title: str, deadline: float) -> int:
    pid = os.fork()
    if pid == 0:
        import ctypes
        import setproctitle
        PR_SET_PDEATHSIG = 1  # a correct stage follows its server: it dies when the root dies
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        setproctitle.setproctitle(title)
        live_until(deadline)
    return pid


def fork_daemon(kind: str, deadline: float) -> None:
    """The classic daemon double fork: the middle process exits at once (and is reaped here), so
    the daemon is an orphan handed to the nearest subreaper or init before anything is injected."""
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            if kind == "setsid":
                os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # daemons outlive their launcher
            live_until(deadline)
        os._exit(0)
    os.waitpid(middle, 0)


class State:
    def __init__(self, worker: int, flap_after: float | None):
        self.worker, self.flap_after = worker, flap_after
        self.worker_died: float | None = None
        self.lock = threading.Lock()

    def reap(self) -> None:
        with self.lock:
            if self.worker_died is None and os.waitpid(self.worker, os.WNOHANG)[0]:
                self.worker_died = time.monotonic()

    def worker_alive(self) -> bool:
        self.reap()
        return self.worker_died is None

    def healthy(self) -> bool:
        if self.worker_alive():
            return True
        return self.flap_after is not None and time.monotonic() - self.worker_died >= self.flap_after


def reap_loop(state: State) -> None:
    """A correct parent reaps its worker at once, whether or not anyone asks for /health."""
    while True:
        state.reap()
        time.sleep(0.05)


def handler_for(state: State, request_log: str | None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def log_request(self, code="-", size="-"):
            if request_log:
                with open(request_log, "a") as f:
                    f.write(f"{self.path} {'before' if state.worker_alive() else 'after'}\n")

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.answer(200 if state.healthy() else 503, {})
            elif self.path == "/v1/models":
                self.answer(200, {"object": "list", "data": [{"id": "mini", "object": "model"}]})
            else:
                self.answer(404, {"error": {"message": "not found"}})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/chat/completions":
                self.answer(404, {"error": {"message": "not found"}})
            elif state.worker_alive():
                self.answer(200, {"choices": [{"message": {"role": "assistant", "content": "ok"}}]})
            else:
                self.answer(503, {"error": {"message": "worker gone"}})
    return Handler


def main() -> None:
    args = parse()
    deadline = time.monotonic() + args.lifetime
    if args.daemon:
        fork_daemon(args.daemon, deadline)
    state = State(fork_worker(args.worker_title, deadline), args.flap_after)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(state, args.request_log))

    def stop(*_):
        try:
            os.kill(state.worker, signal.SIGTERM)
        except ProcessLookupError:
            pass
        while state.worker_alive():
            time.sleep(0.02)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=live_until, args=(deadline,), daemon=True).start()
    threading.Thread(target=reap_loop, args=(state,), daemon=True).start()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    sys.exit(main())
