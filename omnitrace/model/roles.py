"""Which process is the serve main process, which are engines, workers and helpers.

Names come from patterns (the matrix's `patterns`, defaults from vllm-omni); evidence wins where
it exists: the serve root is the topmost process of its family listening on a port, and a process
that held GPU memory is a worker whatever it is called.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omnitrace.model.model import Model
from omnitrace.model.process import Process

SERVE, ENGINE, WORKER, HELPER, OTHER = "serve", "engine", "worker", "helper", "other"


@dataclass
class RolePatterns:
    """Substrings matched against every title a process had and its cmdline."""
    serve: list[str] = field(default_factory=lambda: [" serve ", "vllm_omni.entrypoints",
                                                      "omnitrace.testbed"])
    worker: list[str] = field(default_factory=lambda: ["VLLM::", "vLLM-Omni::",
                                                       "multiprocessing.spawn"])
    engine: list[str] = field(default_factory=lambda: ["EngineCore"])
    helper: list[str] = field(default_factory=lambda: ["multiprocessing.resource_tracker",
                                                       "resource_tracker"])


def matches(proc: Process, patterns: list[str]) -> bool:
    text = proc.own_names()
    return any(p in text for p in patterns)


def find_servers(model: Model, patterns: RolePatterns) -> list[Process]:
    """Serve main processes: the topmost listening process of each family (a worker that opens
    a port is not a second server); where procfs saw no ports, the topmost serve-pattern match."""
    listening = _topmost(model, [p for p in model.processes if p.ports])
    named = _topmost(model, [p for p in model.processes if matches(p, patterns.serve)
                             and not matches(p, patterns.worker) and not matches(p, patterns.helper)])
    listening_ids = {id(p) for p in listening}
    servers = list(listening)
    for proc in named:
        family = [proc, *model.ancestors(proc), *model.descendants(proc)]
        if not any(id(member) in listening_ids for member in family):
            servers.append(proc)
    return sorted(servers, key=lambda p: p.start or 0)


def _topmost(model: Model, candidates: list[Process]) -> list[Process]:
    ids = {id(p) for p in candidates}
    return [p for p in candidates if not any(id(a) in ids for a in model.ancestors(p))]


def _orchestrates(model: Model, proc: Process, role: dict[int, str]) -> bool:
    """Whether a worker-role process has workers below it (its helpers and compilers, role
    helper or other, do not make it an engine)."""
    return any(role.get(id(d)) == WORKER for d in model.descendants(proc))


@dataclass
class Roles:
    server: Process
    tree: list[Process]                 # the server and everything it forked, recursively
    role: dict[int, str]                # id(process) -> role

    def of(self, proc: Process) -> str:
        return self.role.get(id(proc), OTHER)

    def members(self, *roles: str) -> list[Process]:
        return [p for p in self.tree if self.role.get(id(p)) in roles]

    def contains(self, proc: Process) -> bool:
        return id(proc) in self.role

    def by_pid(self, pid: int, t: int | None = None) -> Process | None:
        found = [p for p in self.tree if p.pid == pid]
        if t is not None:
            found = [p for p in found if p.start is None or p.start <= t] or found
        return found[-1] if found else None


def assign_roles(model: Model, server: Process, patterns: RolePatterns) -> Roles:
    tree = [server, *model.descendants(server)]
    gpu_holders = model.gpu.holders() if model.gpu else set()
    role: dict[int, str] = {id(server): SERVE}
    for proc in tree[1:]:
        if matches(proc, patterns.helper):
            role[id(proc)] = HELPER
        elif proc.pid in gpu_holders:
            role[id(proc)] = WORKER
        elif matches(proc, patterns.worker) or matches(proc, patterns.engine):
            role[id(proc)] = WORKER
        else:
            role[id(proc)] = OTHER
    # A worker-named process that holds no GPU memory but has workers below it orchestrates
    # them: it is an engine (vLLM's EngineCore above its VLLM::Worker, with or without a GPU:
    # the seed's `VLLM::` pattern matches both). A pure engine-pattern match is an engine too.
    for proc in tree[1:]:
        if role[id(proc)] == WORKER and proc.pid not in gpu_holders:
            if _orchestrates(model, proc, role) or (
                    matches(proc, patterns.engine) and not matches(proc, patterns.worker)):
                role[id(proc)] = ENGINE
    return Roles(server=server, tree=tree, role=role)
