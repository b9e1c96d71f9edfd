"""One process's life as the timeline shows it: parents, names, exec, exit, reap, signals.

A Process is one incarnation of a pid: a pid the kernel hands out again after a reap starts a new
Process. Facts keep the index of the event they come from (`ref`) so verdicts can cite them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from omnitrace.events import KERNEL_REAPER, signal_name


@dataclass(slots=True)
class ParentChange:
    t: int
    ppid: int | None          # None until evidence (a snapshot, a reap) names the new parent
    ref: int                  # the event that caused or showed the change
    inferred: bool = False    # True when deduced from the old parent's exit, not read from procfs


@dataclass(slots=True)
class SignalReceipt:
    """A signal sent to this process and, once the kernel delivered it, what the process did."""
    t: int
    signal: int
    sender_pid: int
    sender_comm: str
    result: str
    ref: int
    delivered_t: int | None = None
    disposition: str | None = None   # default | ignored | handler
    deliver_ref: int | None = None

    @property
    def name(self) -> str:
        return signal_name(self.signal)


@dataclass(slots=True, eq=False)  # identity: two incarnations of a pid are different
class Process:
    pid: int
    start: int | None                 # None: it existed before the recording began
    start_ref: int | None = None
    parents: list[ParentChange] = field(default_factory=list)
    names: list[tuple[int, str]] = field(default_factory=list)   # (t, comm or title)
    cmdline: list[str] = field(default_factory=list)
    execs: list[tuple[int, str, int]] = field(default_factory=list)  # (t, filename, ref)
    ports: set[int] = field(default_factory=set)
    state: str = ""
    exit_t: int | None = None
    exit_ref: int | None = None
    exit_group_code: int | None = None
    exit_group_ref: int | None = None
    reap_t: int | None = None
    reap_ref: int | None = None
    reaped_by: int | None = None
    reap_code: int | None = None
    reap_signal: int | None = None
    zombie_seen_t: int | None = None  # procfs showed state "zombie" (a fallback when reaps are unseen)
    signals: list[SignalReceipt] = field(default_factory=list)
    ns_pid: int | None = None         # its pid in its own pid namespace (a container's), if not ours
    cgroup: str = ""                  # its cgroup v2 path, as procfs last showed it
    container: str | None = None      # the container it ran in: name when the header names it, else id

    # --- lifetime -----------------------------------------------------------------------------
    def alive_at(self, t: int) -> bool:
        """Running (not yet exited) at t. A zombie is not alive: its memory is already gone."""
        started = self.start is None or self.start <= t
        return started and (self.exit_t is None or t < self.exit_t)

    def exited_by(self, t: int) -> bool:
        return self.exit_t is not None and self.exit_t <= t

    def reaped_by_t(self, t: int) -> bool:
        return self.reap_t is not None and self.reap_t <= t

    # --- identity -----------------------------------------------------------------------------
    @property
    def ppid(self) -> int | None:
        """The first known parent (who forked it, or who procfs first said)."""
        return self.parents[0].ppid if self.parents else None

    def parent_at(self, t: int) -> int | None:
        current = None
        for change in self.parents:
            if change.t > t:
                break
            current = change.ppid
        return current

    def name_at(self, t: int) -> str:
        current = ""
        for when, name in self.names:
            if when > t:
                break
            current = name
        return current or (self.names[0][1] if self.names else "")

    @property
    def name(self) -> str:
        """The latest title: what an engineer would see in ps at the end."""
        return self.names[-1][1] if self.names else ""

    def own_names(self) -> str:
        """What a role pattern may match: every title it gave itself, and its cmdline. A forked
        child starts with its parent's name (the fork record's comm) until it execs or renames;
        once it has, that inherited name is the parent's, not its own: real vLLM's workers fork
        `sh`, `file` and `lscpu` that would otherwise pass for `VLLM::Worker`."""
        names = [n for _, n in self.names]
        if len(names) > 1 and self.start is not None and self.names[0][0] == self.start:
            names = names[1:]
        return " ".join(names + self.cmdline)

    def label(self) -> str:
        title = self.name or (self.cmdline[0] if self.cmdline else "?")
        if self.cmdline and title in ("python", "python3") and len(self.cmdline) > 1:
            title = " ".join(self.cmdline)[:80]
        return f"{self.pid_label()} {title}"

    def pid_label(self) -> str:
        """'pid 48211 (ns 7)': the host pid, and the pid the container's own logs show."""
        if self.ns_pid is None or self.ns_pid == self.pid:
            return f"pid {self.pid}"
        return f"pid {self.pid} (ns {self.ns_pid})"

    def reaper_label(self) -> str:
        """Who reaped it: 'pid 812', or the kernel when it was freed with no wait call seen (a pid
        namespace's teardown, a parent ignoring SIGCHLD)."""
        if self.reaped_by == KERNEL_REAPER:
            return "the kernel (no wait call)"
        return f"pid {self.reaped_by}"

    # --- how it ended -------------------------------------------------------------------------
    def fatal_signal(self) -> SignalReceipt | None:
        """The delivered signal that killed it: default action of a terminating signal, or SIGKILL."""
        for receipt in self.signals:
            if receipt.disposition == "default" and receipt.signal in TERMINATING_SIGNALS:
                return receipt
        return None

    def exit_status(self) -> tuple[int | None, int | None]:
        """(exit_code, killing_signal): from the reap, else exit_group, else the fatal signal."""
        if self.reap_code is not None or self.reap_signal is not None:
            return self.reap_code, self.reap_signal
        fatal = self.fatal_signal()
        if fatal is not None and (self.exit_t is None or fatal.delivered_t <= self.exit_t):
            return None, fatal.signal
        if self.exit_group_code is not None:
            return self.exit_group_code, None
        return None, None


# A container's 64-hex id appears in its cgroup's name: libpod-ID.scope, docker-ID.scope, crio-ID.
CONTAINER_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")


def container_id(cgroup: str) -> str | None:
    found = CONTAINER_ID.findall(cgroup)
    return found[-1] if found else None


# Signals whose default action ends the process (core-dumping ones included).
TERMINATING_SIGNALS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26,
                                 27, 29, 30, 31})
