"""What `omnitrace show` and `omnitrace report` both tell a person about a process tree: which
processes the recording was about, each one's role, a readable name, and the signals it received
with the kernel's per-thread deliveries folded into the signal that caused them.

Only reads the model (omnitrace/model/); verify's verdicts do not depend on anything here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnitrace.events import signal_name
from omnitrace.model import Model, Process
from omnitrace.model.marks import FAULT_KINDS, Mark
from omnitrace.model.process import TERMINATING_SIGNALS, SignalReceipt
from omnitrace.model.roles import (ENGINE, HELPER, OTHER, SERVE, WORKER, RolePatterns,
                                   assign_roles, find_servers)
from omnitrace.model.scenarios import find_scenarios
from omnitrace.verify.matrix import matrix_for

SIGKILL = 9
# The model's roles as a person names them. verify treats a helper-pattern match and any other
# child of the server alike (neither decides a verdict): both are the server's helpers here.
DISPLAY_ROLES = {SERVE: "server", ENGINE: "engine", WORKER: "worker", HELPER: "helper",
                 OTHER: "helper"}
INTERPRETERS = frozenset({"python", "python3", "bash", "sh", "dash"})


# --- which processes the recording was about ------------------------------------------------
def recorded_tree(model: Model) -> set[int] | None:
    """id()s of the recorded command (or the attached processes, or the recorded cgroup's
    members) and all they forked; None when the recording traced everything or does not say
    what it recorded (a hand-made file).

    Everything else got into the timeline only by touching the tree: the recorder itself (a
    SIGCHLD from the command), an outside sender, a pid procfs saw as a parent."""
    header = model.timeline.header
    if header.get("trace_all"):
        return None
    attached = [*(header.get("attach") or []), *(header.get("cgroup_pids") or [])]
    roots = [model.process(pid, model.t0) for pid in attached]
    roots += _group_members(model, header.get("cgroup"))
    recorder = header.get("recorder_pid")
    if recorder is not None:
        roots += [p for p in model.processes if p.ppid == recorder]
    roots = [r for r in roots if r is not None]
    if not roots:
        return None
    members: set[int] = set()
    for root in roots:
        members.update(id(p) for p in [root, *model.descendants(root)])
    return members


def _group_members(model: Model, group: str | None) -> list[Process]:
    """Processes procfs saw in the recorded cgroup (or below it): a runtime moves them in, so
    they need not descend from a member at attach."""
    if not group:
        return []
    below = group.rstrip("/") + "/"
    return [p for p in model.processes if p.cgroup == group or p.cgroup.startswith(below)]


def display_roles(model: Model, patterns: RolePatterns) -> dict[int, str]:
    """id(process) -> server | engine | worker | helper, as verify assigns them: in each scenario's
    server tree; in a recording without scenarios, in the tree of every server found.

    Only the scenarios' servers where there are scenarios: a scenario driver that listens on a
    port of its own (the load client's) would be found as one more server, which verify never
    treats it as."""
    roles: dict[int, str] = {}
    assigned = [s.roles for s in find_scenarios(model, patterns) if s.roles is not None]
    if not assigned:
        assigned = [assign_roles(model, server, patterns)
                    for server in find_servers(model, patterns)]
    for tree_roles in assigned:
        for proc in tree_roles.tree:
            roles.setdefault(id(proc), DISPLAY_ROLES[tree_roles.of(proc)])
    return roles


def display_name(name: str, cmdline: list[str], width: int = 60) -> str:
    """The title, or for an interpreter ('python3', 'sh') what it runs: 'python3 -m x.y args'."""
    args = [a for a in cmdline if a]      # setproctitle pads argv with empty strings
    text = name or " ".join(args)
    if name in INTERPRETERS and len(args) > 1:
        text = " ".join([name, *args[1:]])
    return _cut(text, width)


def command_summary(cmdline: list[str], width: int = 90) -> str:
    """A command as a person would say it: '/venv/bin/python3 /venv/bin/vllm serve /m/tiny' is
    'vllm serve tiny' (the interpreter of a script dropped, absolute paths by their last part)."""
    args = [a for a in cmdline if a]
    if len(args) > 1 and Path(args[0]).name in INTERPRETERS and not args[1].startswith("-"):
        args = args[1:]
    return _cut(" ".join(Path(a).name if a.startswith("/") else a for a in args), width)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def role_patterns(header: dict, matrix_file: str | None, where: str) -> RolePatterns:
    """The role patterns verify would use on this recording (`where`, for errors): --matrix
    FILE's, else those of the matrix the header carries, else the built-in matrix's."""
    return matrix_for(header, matrix_file, where)[0].patterns


# --- scenario windows, from the marks ----------------------------------------------------------
def fault_marks(model: Model) -> list[Mark]:
    return [m for m in model.marks if m.kind in FAULT_KINDS]


def marked_windows(model: Model) -> list[tuple[Mark, list[Mark]]]:
    """Each scenario mark with the fault and oom marks inside its window that are its own or no
    scenario's (the pairing verify makes of them, model/scenarios.py)."""
    faults = fault_marks(model)
    return [(w, [f for f in faults if w.t <= f.t <= w.end and f.scenario in (None, w.scenario)])
            for w in model.marks if w.kind == "scenario"]


def fault_name(mark: Mark) -> str:
    """'SIGKILL', or the mark's kind ('oom') when it names no signal."""
    return signal_name(mark.signal) if mark.signal else mark.kind


# --- signals --------------------------------------------------------------------------------------
@dataclass
class SignalGroup:
    """One signal as a person thinks of it: who sent it, what the process did, and how many of
    its threads the kernel delivered it to (a fatal signal kills every thread with a SIGKILL of
    its own, each traced as a delivery with no sender)."""
    first: SignalReceipt
    threads: int
    by_kernel: bool      # no sender was traced: the kernel's own group kill (exit_group or fatal)

    @property
    def t(self) -> int:
        return self.first.t

    @property
    def name(self) -> str:
        return self.first.name

    def describe(self) -> str:
        """'SIGKILL from pid 9711 python3 (default), delivered to 46 threads'."""
        return describe_signal(self.name, self.first.sender_pid, self.first.sender_comm,
                               self.first.disposition, self.threads, self.by_kernel)


def describe_signal(signal: str, sender_pid: int, sender_comm: str | None,
                    disposition: str | None, threads: int, by_kernel: bool, **_: object) -> str:
    """A signal group in words, from its fields (a SignalGroup's, or the dict signal_group_dict
    makes of one: `describe_signal(**d)`)."""
    how = disposition or "not delivered"
    if by_kernel:
        return (f"{signal} from the kernel to {threads} thread{'s' if threads != 1 else ''} "
                f"({how}): the group's exit")
    sender = "the kernel" if sender_pid == 0 else (
        f"pid {sender_pid}" + (f" {sender_comm}" if sender_comm else ""))
    return f"{signal} from {sender} ({how})" + (
        f", delivered to {threads} threads" if threads > 1 else "")


def thread_delivery(receipt: SignalReceipt) -> bool:
    """A delivery no signal_generate announced: the kernel taking a thread down with the group."""
    return receipt.sender_pid == 0 and receipt.ref == receipt.deliver_ref


def grouped_signals(proc: Process) -> list[SignalGroup]:
    """proc.signals with each run of per-thread SIGKILL deliveries folded into the fatal signal
    before it (or, with none, into one 'group kill by the kernel')."""
    groups: list[SignalGroup] = []
    for receipt in proc.signals:
        if thread_delivery(receipt) and groups and _joins(groups[-1], receipt, proc):
            groups[-1].threads += 1
            continue
        delivered = 1 if receipt.delivered_t is not None else 0
        groups.append(SignalGroup(receipt, delivered, thread_delivery(receipt)))
    return groups


def _joins(group: SignalGroup, receipt: SignalReceipt, proc: Process) -> bool:
    fatal = group.by_kernel or (group.first.disposition == "default"
                                and group.first.signal in TERMINATING_SIGNALS)
    before_exit = proc.exit_t is None or receipt.t <= proc.exit_t
    return receipt.signal == SIGKILL and fatal and before_exit


def signal_group_dict(group: SignalGroup, t0: int) -> dict:
    return {"signal": group.name, "sender_pid": group.first.sender_pid,
            "sender_comm": group.first.sender_comm or None, "by_kernel": group.by_kernel,
            "time": round((group.t - t0) / 1e9, 6), "disposition": group.first.disposition,
            "threads": group.threads}
