"""Starting the server under test, waiting for its health, and making sure nothing of it is left.

The server gets its own session, so the terminal's Ctrl+C reaches the runner, which then stops the
server on purpose, instead of the server taking a SIGINT that no matrix row asked for.
"""
from __future__ import annotations

import os
import random
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field

import httpx
import psutil

from omnitrace.errors import OmnitraceError
from omnitrace.procstat import read_stat


class ServerFailed(OmnitraceError):
    pass


LOWEST_PORT = 10000


def free_port() -> int:
    """A port free now, for a server that binds it a few seconds later. Drawn below the kernel's
    ephemeral range: bind(0) hands out ports from that range, and so does every connect() made
    meanwhile (a load generator, a scraper), so such a port can be taken before the server binds."""
    ephemeral_low = _ephemeral_range()[0]
    if ephemeral_low > LOWEST_PORT + 100:
        for _ in range(100):
            port = random.randrange(LOWEST_PORT, ephemeral_low)
            if _bindable(port):
                return port
    with socket.socket() as s:  # an unusual range, or all tries taken: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def expand(cmd: str, port: int) -> list[str]:
    return shlex.split(cmd.replace("{port}", str(port)))


def ask_health(url: str, timeout_s: float = 1.0) -> httpx.Response | httpx.HTTPError:
    """GET /health: the reply, or the error when nothing answered."""
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return exc


def health_status(url: str, timeout_s: float = 1.0) -> int | None:
    """GET /health's status, or None when nothing answered."""
    reply = ask_health(url, timeout_s)
    return None if isinstance(reply, httpx.HTTPError) else reply.status_code


class DownSince:
    """When the current run of non-2xx (or unanswered) /health polls began; None while healthy.
    A 2xx ends the run, so a health endpoint that flaps back starts "stays unavailable" again."""

    def __init__(self):
        self.since: float | None = None

    def note(self, status: int | None) -> None:
        if status is not None and 200 <= status < 300:
            self.since = None
        elif self.since is None:
            self.since = time.monotonic()

    def held_for(self, seconds: float) -> bool:
        return self.since is not None and time.monotonic() - self.since >= seconds


class StartupAnswers:
    """What /health answered while the server started: counts per status, the last body."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.last_body = ""

    def ask(self, url: str) -> int | None:
        reply = ask_health(url)
        if isinstance(reply, httpx.HTTPError):
            status, key = None, f"no answer ({type(reply).__name__})"
        else:
            status, key, self.last_body = reply.status_code, str(reply.status_code), reply.text[:120]
        self.counts[key] = self.counts.get(key, 0) + 1
        return status

    def describe(self) -> str:
        if not self.counts:
            return "it was never asked"
        counts = ", ".join(f"{key} x{n}" for key, n in sorted(self.counts.items()))
        body = f"; last body: {self.last_body.strip()!r}" if self.last_body.strip() else ""
        return f"/health answered {counts}{body}"


@dataclass
class Server:
    argv: list[str]
    url: str
    proc: subprocess.Popen | None = None
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every tree member ever seen
    # The scenario driver's whole subtree is the server's (see remember_tree); a process with
    # children of its own (pytest) follows the root's descendants only.
    subtree_is_server: bool = False
    foreign: set[int] = field(default_factory=set)  # the driver's own other children (the hog)
    adopted: list[int] = field(default_factory=list)  # roots outside the root's descendants

    def start(self, env: dict[str, str] | None = None) -> int:
        self.proc = subprocess.Popen(self.argv, start_new_session=True, env=env)
        self.seen[self.proc.pid] = psutil.Process(self.proc.pid)
        return self.proc.pid

    def adopt(self, pid: int) -> None:
        """Count `pid` and its descendants as the server's too: a container's init, which conmon
        starts outside the runtime client's descendants."""
        self.seen.setdefault(pid, psutil.Process(pid))
        self.adopted.append(pid)

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds until /health said 200; ServerFailed if it exits or the deadline passes, saying
        what /health did answer meanwhile (a server that never says 200 is told apart from one
        that never listened)."""
        t0 = time.monotonic()
        answers = StartupAnswers()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with status {self.proc.returncode} before "
                                   f"{self.url}/health answered 200 ({answers.describe()}): "
                                   f"`{shlex.join(self.argv)}`")
            if answers.ask(self.url) == 200:
                self.remember_tree()
                return time.monotonic() - t0
            time.sleep(0.1)
        raise ServerFailed(f"{self.url}/health did not answer 200 within {timeout_s:.0f} s "
                           f"({answers.describe()}); check the server command or raise "
                           f"--startup-timeout")

    def remember_tree(self) -> None:
        """Add every process of the server's tree now running; once seen, a member stays known.

        With subtree_is_server (the scenario driver), the tree is this process's descendants
        minus what it started for itself (`foreign`): this process is the server's parent and
        its subreaper (become_subreaper), and the kernel hands an orphan to its nearest subreaper
        ancestor, so nothing the server ever forks can leave this subtree: a double-forked
        daemon, one that called setsid (a new session keeps its parent), or one re-parented from
        an exited middle process all end up here. The root's own descendants alone would miss
        them: they are no longer below the root."""
        tops = _children(psutil.Process()) if self.subtree_is_server else \
            [self.seen[pid] for pid in (self.proc.pid, *self.adopted)]
        for child in tops:
            if child.pid in self.foreign:
                continue
            self.seen.setdefault(child.pid, child)
            for member in _children(child, recursive=True):
                self.seen.setdefault(member.pid, member)

    def alive(self) -> list[psutil.Process]:
        """Seen members still running (a zombie has exited: it counts as gone)."""
        if self.proc is not None:
            self.proc.poll()  # we are the root's parent: reap it as soon as it exits
        self._reap_orphans()
        out = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.NoSuchProcess:
                pass
        return out

    def zombies(self) -> list[int]:
        """Seen members that exited but nobody has reaped yet."""
        return [pid for pid in self.seen if (stat := read_stat(pid)) and stat[1] == "Z"]

    def _reap_orphans(self) -> None:
        """Reap tree members that were re-parented to us (see become_subreaper)."""
        me = os.getpid()
        for pid in self.seen:
            if self.proc is not None and pid == self.proc.pid:
                continue
            stat = read_stat(pid)  # one read gives parent and state (polled every 0.1 s)
            if stat and stat[0] == me and stat[1] == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def stop(self, term_grace_s: float = 5.0) -> list[str]:
        """Stop everything left: SIGTERM to the root, then SIGKILL to any member still running.
        Returns a description of each process that needed the SIGKILL."""
        self.remember_tree()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(term_grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Helpers (multiprocessing's resource tracker) leave by themselves once the root is gone.
        psutil.wait_procs(self.alive(), timeout=3)
        killed = []
        for proc in self.alive():
            try:
                killed.append(f"{proc.pid} {proc.name()}")
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self.seen.values()), timeout=5)
        if self.proc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return killed


def _children(proc: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
    try:
        return proc.children(recursive=recursive)
    except psutil.NoSuchProcess:
        return []


def become_subreaper() -> bool:
    """Make orphans of the server re-parent to this process instead of pid 1, and so be reaped
    where the recorder sees it: this process plays the container init (tini, dumb-init) that a
    real deployment has. Without it, on hosts whose pid 1 is no reaper (or is not traced), every
    orphan would stay an unreaped zombie on the timeline. Orphans still outlive their parent, so
    residue rules are unaffected."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: v for k, v in extra.items() if v is not None})
    return env
