"""Ground truth: one matrix row against one server, measured from outside without omnitrace.

    python -m tests.corpus.truth --serve CMD --row ROW --matrix FILE --out truth.json

This process starts the server (own session, as the scenario driver does), is its subreaper (as
the driver is) and reaps whatever is re-parented to it, injects the row's fault itself, and
watches, for the row's whole window (`observe_s` after the fault):

- the tree: every process whose parent is a member or that carries this run's marker in its
  environment (so a double-forked, setsid daemon re-parented away is still found), known by pid +
  start time from the moment it appears; each member's exit time from a pidfd (exact, no polling);
  its state (zombie or not) at the residue checkpoint; the root's exit status from waitpid; the
  target's SIGTERM/SIGINT disposition (caught, ignored, default) from /proc before the signal;
- HTTP: /health at 20 Hz (the rate of omnitrace's recorder, so the server sees the same
  observer), for load rows streaming and plain requests open at the fault, for worker rows chat
  probes after it (one at a time until one fails, then 4 at once, as the driver does), for
  stop-accepting rows one chat after the grace period.

A window ends early only when nothing can change any more: every member exited and was reaped and
every request ended. Nothing is killed before the window ends. Then each rule of the row gets the
verdict the measurements support (`derive`), with the figures that decide it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

import httpx
import psutil

from tests.corpus import spec
from tests.corpus.verdicts import FAILED_ENDS, derive

MARKER = "CORPUS_TRUTH_RUN"
HEALTH_HZ = 20.0
SCAN_S = 0.05
CLIENT_TIMEOUT_S = 20.0      # the driver's client timeout
LOAD = ("chat-stream",) * 4 + ("chat",) * 2


# ---- the tree ------------------------------------------------------------------------------------
@dataclass
class Member:
    pid: int
    start: float              # psutil create_time (with pid, the identity)
    ppid: int
    cmdline: str
    seen_t: float
    exit_t: float | None = None


class Tree:
    """Every process of the server's tree since its start, found by parentage or marker."""

    def __init__(self, marker: str):
        self.marker = marker
        self.members: dict[int, Member] = {}     # pid -> the latest member with that pid
        self.examined: set[int] = set()
        self.pidfds: dict[int, int] = {}         # fd -> pid
        self.lock = threading.Lock()
        self.scanning = threading.Lock()   # the watcher thread and inject() both scan
        self.stop = threading.Event()

    def add_root(self, pid: int) -> None:
        self._examine(pid, force=True)

    def run(self) -> None:
        threading.Thread(target=self._watch_exits, daemon=True).start()
        while not self.stop.is_set():
            self.scan()
            time.sleep(SCAN_S)

    def scan(self) -> None:
        with self.scanning:
            pids = set(psutil.pids())
            self.examined &= pids                     # a pid that left may come back as another one
            for pid in sorted(pids - self.examined):  # parents usually have the lower pid
                self._examine(pid)

    def _examine(self, pid: int, force: bool = False) -> None:
        self.examined.add(pid)
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                ppid, start = proc.ppid(), proc.create_time()
                live_parent = ppid in self.members and self.members[ppid].exit_t is None
                if not (force or live_parent or proc.environ().get(MARKER) == self.marker):
                    return
                cmdline = " ".join(proc.cmdline()) or proc.name()
            fd = os.pidfd_open(pid)
            if psutil.Process(pid).create_time() != start:   # recycled before the pidfd opened
                os.close(fd)
                return
        except (psutil.Error, OSError):
            return
        with self.lock:
            self.members[pid] = Member(pid, start, ppid, cmdline, time.monotonic())
            self.pidfds[fd] = pid

    def _watch_exits(self) -> None:
        """A pidfd turns readable when its process exits (zombie or not): the exit time, exactly."""
        while not self.stop.is_set():
            with self.lock:
                fds = list(self.pidfds)
            if not fds:
                time.sleep(SCAN_S)
                continue
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(SCAN_S * 1000):
                now = time.monotonic()
                with self.lock:
                    pid = self.pidfds.pop(fd)
                    self.members[pid].exit_t = now
                os.close(fd)

    def refresh(self) -> None:
        """Re-read the cmdline of live members: one first seen between fork and exec showed its
        parent's."""
        for member in self.alive():
            try:
                proc = psutil.Process(member.pid)
                if proc.create_time() == member.start:
                    member.cmdline = " ".join(proc.cmdline()) or proc.name()
            except psutil.Error:
                pass

    def alive(self) -> list[Member]:
        with self.lock:
            return [m for m in self.members.values() if m.exit_t is None]

    def zombies(self) -> list[Member]:
        return [m for m in list(self.members.values()) if m.exit_t is not None and is_zombie(m)]


def is_zombie(member: Member) -> bool:
    try:
        proc = psutil.Process(member.pid)
        return proc.create_time() == member.start and proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def disposition(pid: int, signum: int) -> str:
    """caught, ignored, blocked (its main thread holds it pending, for sigwait/signalfd) or
    default, from /proc/PID/status's signal masks."""
    masks = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("SigCgt", "SigIgn", "SigBlk"):
                masks[key] = int(value, 16)
    bit = 1 << (signum - 1)
    if masks["SigCgt"] & bit:
        return "caught"
    if masks["SigIgn"] & bit:
        return "ignored"
    return "blocked" if masks["SigBlk"] & bit else "default"


# ---- HTTP ----------------------------------------------------------------------------------------
@dataclass
class Exchange:
    kind: str                 # health, chat, chat-stream
    start: float
    end: float | None = None
    status: int | None = None
    ended: str | None = None  # completed, 4xx, 5xx, truncated, reset, refused, timeout
    first_byte: float | None = None


# One client for every exchange (building one costs tens of ms of CPU: probes would lag), with
# no connection reuse, so that each probe and request opens its own connection.
CLIENT = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


def exchange(url: str, kind: str, model: str | None, log: list, timeout_s: float) -> Exchange:
    ex = Exchange(kind, time.monotonic())
    log.append(ex)
    if kind == "health":
        method, path, body = "GET", "/health", None
    else:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 48,
                "stream": kind == "chat-stream", **({"model": model} if model else {})}
        method, path = "POST", "/v1/chat/completions"
    try:
        with CLIENT.stream(method, url + path, json=body, timeout=timeout_s) as reply:
            ex.status = reply.status_code
            done = False
            for chunk in reply.iter_bytes():
                ex.first_byte = ex.first_byte or time.monotonic()
                done = done or b"data: [DONE]" in chunk
        streamed_ok = kind != "chat-stream" or done or reply.status_code >= 300
        ex.ended = (f"{reply.status_code // 100}xx" if reply.status_code >= 300 else
                    "completed" if streamed_ok else "truncated")
    except httpx.ConnectError:
        ex.ended = "refused"
    except httpx.TimeoutException:
        ex.ended = "timeout"
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        ex.ended = "reset"
    ex.end = time.monotonic()
    return ex


def in_background(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


# ---- one row -------------------------------------------------------------------------------------
@dataclass
class Run:
    serve: str
    row: str
    port: int
    url: str = ""
    fault_t: float = 0.0
    targets: list[int] = field(default_factory=list)
    dispositions: dict[int, str] = field(default_factory=dict)
    root_status: dict | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    window_end: float = 0.0
    checkpoint_alive: list[int] | None = None
    checkpoint_zombies: list[int] | None = None
    early: bool = False
    probe_threads: list[threading.Thread] = field(default_factory=list)
    seen: list[Exchange] = field(default_factory=list)   # the exchanges as at the window's end


class Truth:
    def __init__(self, serve: str, row, patterns, port: int):
        self.row, self.patterns = row, patterns
        self.run = Run(serve, row.id, port, url=f"http://127.0.0.1:{port}")
        self.tree = Tree(uuid.uuid4().hex)
        self.stop = threading.Event()
        self.model: str | None = None

    def measure(self) -> dict:
        become_subreaper()
        env = {**os.environ, MARKER: self.tree.marker}
        argv = shlex.split(self.run.serve.replace("{port}", str(self.run.port)))
        self.root = subprocess.Popen(argv, start_new_session=True, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tree.add_root(self.root.pid)
        in_background(self.tree.run)
        in_background(self.reap)
        try:
            self.wait_healthy()
            in_background(self.probe_health)
            self.wait_for_a_2xx_health()
            if self.row.load:
                self.start_load()
            self.inject()
            self.observe()
        finally:
            self.stop.set()
            self.tree.stop.set()
            self.kill_everything()
        return self.report()

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.run.root_status is not None:
                raise RuntimeError(f"the server exited before it was healthy: {self.run.root_status}")
            try:
                if CLIENT.get(self.run.url + "/health", timeout=1).status_code == 200:
                    models = CLIENT.get(self.run.url + "/v1/models", timeout=5).json()
                    self.model = models["data"][0]["id"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.run.url}/health not 200 within {timeout_s} s")

    def wait_for_a_2xx_health(self) -> None:
        wait_until(lambda: any(e.kind == "health" and e.status == 200 and e.end is not None
                               for e in list(self.run.exchanges)))

    def probe_health(self) -> None:
        period = 1.0 / HEALTH_HZ
        while not self.stop.is_set():
            in_background(exchange, self.run.url, "health", None, self.run.exchanges, 1.0)
            time.sleep(period)

    def start_load(self) -> None:
        for kind in LOAD:
            in_background(exchange, self.run.url, kind, self.model, self.run.exchanges,
                          CLIENT_TIMEOUT_S)
        # as the driver: inject once a stream has its first byte (it is being served right now)
        wait_until(lambda: any(e.kind == "chat-stream" and e.first_byte
                               for e in list(self.run.exchanges)))

    def inject(self) -> None:
        signum = signal.Signals[self.row.fault].value
        self.tree.scan()
        self.tree.refresh()
        targets = self.choose_targets()
        for proc in targets:
            self.run.dispositions[proc.pid] = disposition(proc.pid, signum)
        self.run.fault_t = time.monotonic()
        for i, proc in enumerate(targets):
            if i:
                time.sleep(0.1)   # the runner's gap for `all`
            try:
                proc.send_signal(signum)
                self.run.targets.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        if self.row.target == "worker":
            self.run.probe_threads.append(in_background(self.fail_fast_probes))
        if "stop-accepting" in self.row.rules:
            self.run.probe_threads.append(in_background(self.late_probe))

    def choose_targets(self) -> list[psutil.Process]:
        root = psutil.Process(self.root.pid)
        tree = [root] + root.children(recursive=True)
        if self.row.target == "serve":
            return [root]
        if self.row.target == "all":
            return tree
        workers = [p for p in tree[1:] if self.is_worker(p)]
        if not workers:
            raise RuntimeError("no process of the tree matches the matrix's worker patterns")
        return workers[:1]

    def is_worker(self, proc: psutil.Process) -> bool:
        try:
            return self.patterns.is_worker(proc.name() + " " + " ".join(proc.cmdline()))
        except psutil.Error:
            return False

    def fail_fast_probes(self) -> None:
        deadline = time.monotonic() + 31
        while time.monotonic() < deadline and not self.stop.is_set():
            ex = exchange(self.run.url, "chat", self.model, self.run.exchanges, CLIENT_TIMEOUT_S)
            if ex.ended in FAILED_ENDS:
                break
            time.sleep(0.5)
        threads = [in_background(exchange, self.run.url, "chat", self.model, self.run.exchanges,
                                 CLIENT_TIMEOUT_S) for _ in range(4)]
        for t in threads:
            t.join()

    def late_probe(self) -> None:
        if not self.stop.wait(self.row.thresholds["stop_accepting_s"] + 0.5):
            exchange(self.run.url, "chat", self.model, self.run.exchanges, CLIENT_TIMEOUT_S)

    def observe(self) -> None:
        end = self.run.fault_t + self.row.observe_s
        checkpoint = self.run.fault_t + self.row.thresholds.get("residue_s", self.row.observe_s)
        while time.monotonic() < end:
            if self.run.checkpoint_alive is None and time.monotonic() >= checkpoint:
                self.take_checkpoint()
            if self.nothing_can_change():
                self.run.early = True
                break
            time.sleep(SCAN_S)
        self.run.window_end = time.monotonic()
        # what the window saw: exchanges and exits after it are the clean-up's, not the fault's
        self.run.seen = [replace(e) for e in list(self.run.exchanges)]
        if self.run.checkpoint_alive is None:
            self.take_checkpoint()   # the window ended first: the state then (settled if early)

    def take_checkpoint(self) -> None:
        self.run.checkpoint_alive = [m.pid for m in self.tree.alive()]
        self.run.checkpoint_zombies = [m.pid for m in self.tree.zombies()]

    def nothing_can_change(self) -> bool:
        """Every member exited and was reaped, every request ended, and /health has answered
        since the last exit (what a client saw of the tree's end)."""
        if self.tree.alive() or self.tree.zombies():
            return False
        open_requests = [e for e in self.run.exchanges if e.kind != "health" and e.end is None]
        if open_requests or any(t.is_alive() for t in self.run.probe_threads):
            return False
        last_exit = max(m.exit_t for m in self.tree.members.values())
        return any(e.kind == "health" and e.start > last_exit and e.end is not None
                   for e in list(self.run.exchanges))

    def reap(self) -> None:
        """As the scenario driver does: reap the root and every orphan re-parented to us."""
        while not self.tree.stop.is_set():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == self.root.pid:
                self.run.root_status = describe_status(status)
            if not pid:
                time.sleep(0.02)

    def kill_everything(self) -> None:
        for member in self.tree.alive():
            try:
                proc = psutil.Process(member.pid)
                if proc.create_time() == member.start:
                    proc.kill()
            except psutil.Error:
                pass

    def report(self) -> dict:
        t0 = self.run.fault_t
        end = self.run.window_end
        members = [{**asdict(m), "seen_t": rel(m.seen_t, t0),
                    "exit_t": rel(m.exit_t, t0) if m.exit_t and m.exit_t <= end else None}
                   for m in self.tree.members.values()]
        exchanges = [{**asdict(e), "start": rel(e.start, t0), "end": rel(e.end, t0),
                      "first_byte": rel(e.first_byte, t0)} for e in self.run.seen]
        measured = {"server": self.run.serve, "row": self.row.id, "root": self.root.pid,
                    "targets": self.run.targets, "dispositions": {str(pid): how for pid, how in self.run.dispositions.items()},
                    "root_status": self.run.root_status, "window_s": rel(self.run.window_end, t0),
                    "ended_early": self.run.early, "checkpoint_alive": self.run.checkpoint_alive,
                    "checkpoint_zombies": self.run.checkpoint_zombies,
                    "members": members, "exchanges": exchanges}
        measured["truth"] = derive(measured, self.row, self.patterns)
        return measured


def rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 4)


def describe_status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the server")
        time.sleep(0.01)


def free_port() -> int:
    """A port free now, below the ephemeral range (which connect() draws from meanwhile)."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 20000-32000")


def become_subreaper() -> None:
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.corpus.truth")
    ap.add_argument("--serve", required=True, help="server command; {port} is replaced")
    ap.add_argument("--row", required=True)
    ap.add_argument("--matrix", required=True)
    ap.add_argument("--port", type=int, default=None, help="default: a free one")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows, patterns = spec.load(a.matrix)
    result = Truth(a.serve, rows[a.row], patterns, a.port or free_port()).measure()
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
