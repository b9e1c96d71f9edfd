"""What many tests share: waiting on a condition with a deadline, opening an SSE stream from a
test server, and running one recorder source on its own into a real timeline file, as the
recorder drives it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

from omnitrace.record.source import RecordContext
from omnitrace.timeline import TimelineWriter, make_header, read_timeline


FIRST_EVENT = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'


def open_stream(handler) -> None:
    """From an http.server handler: answer 200 as an SSE stream and send its first event, flushed,
    so the client has its first byte (the stream is open, not finished)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(FIRST_EVENT)
    handler.wfile.flush()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", step: float = 0.01):
    """predicate()'s first true value, polled until the deadline; AssertionError after it.
    (omnitrace.testbed.harness.wait_until is the tool's own: it returns None at the deadline.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def matrix_run(out, *args: str, env=None, timeout: float = 600):
    """`omnitrace matrix run --out OUT ARGS...` as a user runs it: (the finished CLI, its
    report.json or None when it wrote none)."""
    cli = subprocess.run([sys.executable, "-m", "omnitrace.cli", "matrix", "run", "--out", str(out),
                          *args], env=env, capture_output=True, text=True, timeout=timeout)
    report = out / "report.json"
    return cli, json.loads(report.read_text()) if report.exists() else None


def fails_exactly(cli, report, expected: set[str], what: str) -> tuple[dict, dict]:
    """A one-row run of a defect: the CLI exits 1 and the row fails exactly `expected`;
    (the scenario, its failed rules by id)."""
    assert cli.returncode == 1, cli.stdout[-3000:]
    (scenario,) = report["scenarios"]
    failed = {r["id"]: r for r in scenario["rules"] if r["verdict"] == "fail"}
    assert set(failed) == expected, f"{what}: {cli.stdout[-3000:]}"
    return scenario, failed


def record_example_suite(tmp_path, selector: str, timeout: float = 240):
    """`omnitrace record -- pytest examples/reliability -k SELECTOR` as a user runs it, on a
    simulated GPU: (the finished record, the timeline's path, the environment)."""
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu"), "PYTHONPATH": os.getcwd()}
    timeline = tmp_path / "run.jsonl"
    recorded = subprocess.run(
        [sys.executable, "-m", "omnitrace.cli", "record", "-o", str(timeline), "--",
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/reliability",
         "-k", selector], env=env, capture_output=True, text=True, timeout=timeout)
    return recorded, timeline, env


class SourceRun:
    """One source writing a real timeline file; `events` is a live view for polling."""

    def __init__(self, tmp_path, source, root_pid: int | None = None):
        self.path = tmp_path / "run.jsonl"
        self.source = source
        self.writer = TimelineWriter(self.path, make_header(["test"], {source.name: {}}))
        self.events: list = []
        self.ctx = RecordContext(emit=self._emit)
        self.ctx.root_pid = root_pid

    def _emit(self, event) -> None:
        self.events.append(event)
        self.writer.append(event)

    def __enter__(self) -> "SourceRun":
        self.source.prepare(self.ctx)
        self.source.start(self.ctx)
        return self

    def finish(self):
        """Stop the source, write the footer, and read the file back (once)."""
        if not self.writer.closed:
            self.source.stop()
            self.writer.close({self.source.name: self.source.counters()})
        return read_timeline(self.path)

    def __exit__(self, *exc) -> None:
        self.finish()

    def wait_for_event(self, kind: str, predicate, timeout: float = 30.0, what: str = "an event"):
        def found():
            return next((e for e in list(self.events) if e.kind == kind and predicate(e)), None)
        try:
            return wait_for(found, timeout, what)
        except AssertionError:
            last = [e for e in self.events if e.kind == kind][-3:]
            raise AssertionError(f"timed out waiting for {what}; last: {last}") from None


@contextmanager
def ready_processes():
    """start(code, env=None, prefix=()) runs `[*prefix] python -c code`, which must print READY
    once it holds what it set out to hold; every process started is killed at the end, also when
    a test fails. A prefix (e.g. `unshare ... --kill-child`) must end its child with it."""
    procs: list[subprocess.Popen] = []

    def start(code: str, env: dict | None = None, prefix=()) -> subprocess.Popen:
        proc = subprocess.Popen([*prefix, sys.executable, "-c", code], stdout=subprocess.PIPE,
                                text=True, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "READY"
        return proc
    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
