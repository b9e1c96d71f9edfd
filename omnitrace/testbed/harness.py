"""Start a testbed as a child process and always clean it up: for tests, the demo and the matrix
runner.

    with running_testbed(["--defect", "orphan-stages"], sim_dir=tmp) as tb:
        tb.url, tb.pid, tb.stage_pids, tb.tree_pids(), tb.log()

The testbed runs in its own session, so cleanup can kill its process group even after the root
died; pids seen in the tree are also killed one by one, since a stage could have left the group.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from omnitrace.gpu import sim

READY = re.compile(r"READY (\S+) pid=(\d+) stages=([\d,]+) gpu=(\S+)")



def _default_sigint() -> None:
    """A suite run in the background (`make test &`) inherits SIGINT ignored, and Python keeps it
    ignored: the testbed would then shut down on SIGINT (uvicorn's own handler) but exit 0 where a
    user's Ctrl+C gives 130. The server under test gets the action a terminal would give it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

class Testbed:
    def __init__(self, args: list[str], sim_dir: str | os.PathLike, ready_timeout_s: float = 30.0):
        self.sim_dir = str(sim_dir)
        env = {**os.environ, sim.ENV_VAR: self.sim_dir, "PYTHONUNBUFFERED": "1"}
        self._log_file = tempfile.TemporaryFile(mode="w+")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnitrace.cli", "testbed", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env,
            start_new_session=True, preexec_fn=_default_sigint)
        self.seen: dict[int, float] = {}     # pid -> create time, so a reused pid is spared
        self.ready_s = self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> float:
        box: dict = {}

        def read():   # readline blocks; a thread keeps the deadline honest
            for line in self.proc.stdout:
                if m := READY.match(line):
                    box["m"] = m
                    return
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if "m" not in box:
            self.stop()
            raise RuntimeError(f"testbed not ready within {timeout_s} s; log:\n{self.log()}")
        m = box["m"]
        self.url, self.pid = m.group(1), int(m.group(2))
        self.stage_pids = [int(p) for p in m.group(3).split(",")]
        self.gpu = m.group(4)
        self.tree_pids()
        return time.monotonic() - self.started_at

    def tree_pids(self) -> list[int]:
        """Root and its descendants as psutil sees them now (stages re-parented away are not)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(p.pid, p.create_time())
        return [p.pid for p in procs]

    def log(self) -> str:
        self._log_file.seek(0)
        return self._log_file.read()

    def stop(self) -> None:
        """Kill everything this testbed ever had, and reap the root."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc.stdout.close()


@contextlib.contextmanager
def running_testbed(args: list[str] = (), sim_dir: str | os.PathLike | None = None,
                    ready_timeout_s: float = 30.0):
    with contextlib.ExitStack() as stack:
        if sim_dir is None:
            sim_dir = stack.enter_context(tempfile.TemporaryDirectory(dir=_shm()))
        Path(sim_dir).mkdir(parents=True, exist_ok=True)
        tb = Testbed(list(args), sim_dir, ready_timeout_s)
        try:
            yield tb
        finally:
            tb.stop()


def _shm() -> str | None:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


# -- probes the tests (and anyone driving a testbed) use --------------------------------------

def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (it holds nothing but its pid)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout_s: float, step_s: float = 0.02) -> float | None:
    """Seconds until predicate() held, or None at the deadline."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(step_s)


class StreamingChat(threading.Thread):
    """A streaming chat request on its own thread; records when each chunk came and how it ended:
    outcome is "ok" (saw [DONE]), "error-event" (an error event in the stream), "truncated",
    "http <status>", or the exception's class name."""

    def __init__(self, url: str, max_tokens: int = 400, timeout_s: float = 60.0, **extra):
        super().__init__(daemon=True)
        self.url, self.timeout_s = url, timeout_s
        self.body = {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                     "max_tokens": max_tokens, **extra}
        self.chunk_times: list[float] = []
        self.lines: list[str] = []
        self.outcome: str | None = None
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        import httpx
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=self.body,
                              timeout=self.timeout_s) as r:
                if r.status_code != 200:
                    self.outcome = f"http {r.status_code}"
                    return
                for line in r.iter_lines():
                    if line:
                        self.chunk_times.append(time.monotonic())
                        self.lines.append(line)
                if any(line.startswith('data: {"error"') for line in self.lines):
                    self.outcome = "error-event"   # vLLM's engine failure inside a 200 stream
                elif self.lines and self.lines[-1] == "data: [DONE]":
                    self.outcome = "ok"
                else:
                    self.outcome = "truncated"
        except Exception as exc:  # the failure is what is being observed
            self.outcome = type(exc).__name__
        finally:
            self.ended_at = time.monotonic()

    def wait_tokens(self, n: int, timeout_s: float = 15.0) -> bool:
        return wait_until(lambda: len(self.chunk_times) >= n or self.outcome, timeout_s) is not None \
            and len(self.chunk_times) >= n
