"""Signals by role in a server's process tree, the way the upstream suite sends them.

The tree is `[root] + root.children(recursive=True)` captured at injection time. Roles:
  serve   the root (the API server)
  worker  the first process in the tree whose name + cmdline matches the matrix's worker
          patterns and no engine pattern; else the first engine (never a helper)
  all     the root, then each live descendant, ALL_GAP_S apart
  PATTERN any other text: every tree process whose name + cmdline contains it; a number is a pid
psutil.Process.send_signal checks the create time, so a recycled pid is never signalled.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import psutil

from omnitrace.container import is_namespace_init
from omnitrace.errors import OmnitraceError
from omnitrace.events import signal_name, signal_number
from omnitrace.inject import marks
from omnitrace.inject.roles import PATTERNS, worker_rank
from omnitrace.model.roles import RolePatterns

ALL_GAP_S = 0.1  # upstream's gap between signals for "kill all"
ROLES = ("serve", "worker", "all")


class InjectionRefused(OmnitraceError):
    """The injection would hit something it must never hit."""


@dataclass
class SignalFault:
    server: int
    target: str
    signal: int
    pids: list[int] = field(default_factory=list)     # signalled, in order
    missed: list[int] = field(default_factory=list)   # gone before their turn
    dropped: dict[int, str] = field(default_factory=dict)  # pid -> why the kernel ignores it
    t_start_ns: int = 0
    t_end_ns: int = 0


def describe(proc: psutil.Process) -> str:
    try:
        return proc.name() + " " + " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def server_tree(server: int) -> list[psutil.Process]:
    """Root first, then descendants in psutil's (breadth-first) order."""
    _refuse_forbidden(server, what="--server")
    try:
        root = psutil.Process(server)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        raise InjectionRefused(f"--server {server}: no such process; pass the pid of the "
                               f"running server's root process") from None


def select(tree: list[psutil.Process], target: str,
           patterns: RolePatterns = PATTERNS) -> list[psutil.Process]:
    root = tree[0]
    if target == "serve":
        chosen = [root]
    elif target == "all":
        chosen = list(tree)
    elif target == "worker":
        ranked = [(rank, i, p) for i, p in enumerate(tree[1:])
                  if (rank := worker_rank(describe(p), patterns)) is not None]
        chosen = [min(ranked, key=lambda r: r[:2])[2]] if ranked else []
    elif target.isdigit():
        pid = int(target)
        _refuse_forbidden(pid, what="--target")
        chosen = [p for p in tree if p.pid == pid]
        if not chosen:
            raise InjectionRefused(f"--target {pid} is not in the process tree of server "
                                   f"{root.pid}; only that tree's processes may be signalled")
    else:
        chosen = [p for p in tree if target in describe(p)]
    if not chosen:
        raise InjectionRefused(f"--target {target}: no process in the tree of server {root.pid} "
                               f"matches; `ps --forest -p {root.pid}` shows the tree")
    for proc in chosen:
        _refuse_forbidden(proc.pid, what=f"--target {target}")
    return chosen


def _refuse_forbidden(pid: int, what: str) -> None:
    if pid <= 1:
        raise InjectionRefused(f"{what}: refusing to signal pid {pid} (init or a process group)")
    if pid == os.getpid():
        raise InjectionRefused(f"{what}: refusing to signal omnitrace's own process ({pid})")
    if pid in _own_ancestors():
        raise InjectionRefused(f"{what}: pid {pid} is an ancestor of omnitrace itself; "
                               f"signalling it would stop the injector and its recording")


def _own_ancestors() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        return set()


def kernel_ignores(pid: int, number: int) -> str | None:
    """Why the kernel will drop `number` sent to `pid` from here, or None when it delivers it:
    the process set it to SIG_IGN, or it is pid 1 of a pid namespace (a container's init) with
    no handler, which the kernel shields from every signal but SIGKILL and SIGSTOP
    (pid_namespaces(7)).
    The second is what users hit: `docker stop` to a server run as pid 1 without a SIGTERM
    handler waits its whole timeout, then kills."""
    masks = _signal_masks(pid)
    if masks is None or number in (signal.SIGKILL, signal.SIGSTOP):
        return None
    bit = 1 << (number - 1)
    if masks["SigIgn"] & bit:
        return f"pid {pid} ignores {signal_name(number)} (SIG_IGN)"
    if not masks["SigCgt"] & bit and is_namespace_init(pid):
        return (f"pid {pid} is pid 1 of its pid namespace (a container's init) and has no "
                f"{signal_name(number)} handler: the kernel drops the signal")
    return None


def _signal_masks(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v, 16) for k, _, v in (line.partition(":") for line in f)
                    if k in ("SigIgn", "SigCgt")}
    except (OSError, ValueError):
        return None


def inject_signal(server: int, target: str, sig: str | int, gap_s: float = ALL_GAP_S,
                  scenario: str | None = None, server_url: str | None = None,
                  patterns: RolePatterns = PATTERNS) -> SignalFault:
    """Signal the chosen processes inside a fault mark (span) that names them. `patterns`: the
    matrix's role patterns, which verify reads too."""
    try:
        number = signal_number(sig)
    except ValueError:
        raise InjectionRefused(f"--signal {sig}: unknown signal; use KILL, TERM or INT") from None
    tree = server_tree(server)
    chosen = select(tree, target, patterns)
    fault = SignalFault(server=server, target=target, signal=number)
    context = marks.context_from_env()
    attributes = marks.fault_attributes(
        signal_name(number), target, [p.pid for p in chosen],
        scenario=scenario or context["scenario"], server_pid=server,
        server_url=server_url or context["server_url"])
    with marks.span(marks.FAULT_SPAN, attributes) as span:
        fault.t_start_ns = time.monotonic_ns()
        for index, proc in enumerate(chosen):
            if index and gap_s:
                time.sleep(gap_s)
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(proc.pid)
                why = kernel_ignores(proc.pid, number)
                proc.send_signal(number)
                fault.pids.append(proc.pid)
                if why:
                    fault.dropped[proc.pid] = why
            except psutil.NoSuchProcess:
                fault.missed.append(proc.pid)  # "all": an earlier signal already took it down
        fault.t_end_ns = time.monotonic_ns()
        # The verifier reads the pids actually signalled, in order.
        span.set_attribute("omnitrace.fault.pids", fault.pids)
    marks.flush()
    return fault
