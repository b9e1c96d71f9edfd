"""Helpers for tests that run `omnitrace record` for real (root, BPF) against real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "tests" / "workloads"
OMNITRACE = [sys.executable, "-m", "omnitrace.cli"]
QUIET_SOURCES = ["--no-health", "--no-otlp", "--gpu", "off"]


def start_recording(output: Path, command: list[str], *flags: str, env: dict | None = None,
                    **popen) -> subprocess.Popen:
    return subprocess.Popen(
        OMNITRACE + ["record", "-o", str(output), *QUIET_SOURCES, *flags, "--", *command],
        cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True, **popen)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_session(proc: subprocess.Popen, also: list[psutil.Process] = ()) -> None:
    """Kill the recorder and everything it started. The recorded command runs in a process group
    of its own, so kill the descendants one by one too (and `also`: ones orphaned earlier)."""
    for child in [*descendants(proc.pid), *also]:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def record_lifecycle_tree(output: Path, *flags: str) -> tuple[dict[str, int], int]:
    """Record tests/workloads/lifecycle_tree.py; kill its `outside` child from here, outside
    the traced tree. Returns (the workload's pids by role, the recorder's exit status)."""
    proc = start_recording(output, [sys.executable, str(WORKLOADS / "lifecycle_tree.py")], *flags,
                           stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        os.kill(pids["outside"], signal.SIGKILL)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            kill_session(proc)
    return pids, status
