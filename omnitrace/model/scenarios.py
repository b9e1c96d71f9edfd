"""Scenarios: windows of a recording in which one fault was injected into one server.

From marks when the injector or the pytest plugin wrote them (docs/marks.md); otherwise detected:
fatal signals sent from outside a server's tree to processes of that tree start a scenario (signals
a few seconds apart from one sender form one fault: "kill all" sends them 0.1 s apart), and so does
a process outside every server tree that starts holding GPU memory while a server runs (an OOM hog).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from omnitrace.events import signal_name
from omnitrace.model.marks import FAULT_KINDS
from omnitrace.model.model import Model
from omnitrace.model.process import Process
from omnitrace.model.roles import SERVE, Roles, RolePatterns, assign_roles, find_servers

FAULT_SIGNALS = frozenset({1, 2, 3, 6, 9, 15})
GROUP_GAP_NS = 3_000_000_000      # signals closer than this from one sender are one fault
PRE_FAULT_NS = 2_000_000_000      # a detected scenario opens this long before its fault
DEFAULT_OBSERVE_S = 150.0
OOM_ROW = "oom/gpu-hog"


@dataclass
class Scenario:
    id: str                      # the matrix row id ("under-load/sigkill/serve"), or detected one
    start: int
    end: int
    fault_t: int | None          # injection time; None if the marks named no fault
    signal: int | None           # None for OOM
    target: str                  # worker | serve | all | pattern | oom
    target_pids: list[int]
    server: Process | None
    roles: Roles | None
    origin: str                  # "marks" or "detected"
    load: bool = False
    refs: list[int] = field(default_factory=list)
    server_url: str | None = None   # from the marks: requests elsewhere are not this scenario's
    variant: str | None = None      # an input mark's abnormal request (the fault "input")

    @property
    def fault(self) -> str:
        if self.variant is not None:
            return "input"
        return "oom" if self.target == "oom" else (signal_name(self.signal) if self.signal else "?")

    def targets(self) -> list[Process]:
        if self.roles is None or self.fault_t is None:
            return []
        found = [self.roles.by_pid(pid, self.fault_t) for pid in self.target_pids]
        return [p for p in found if p is not None]


ObserveFor = Callable[[str], "float | None"]


def find_scenarios(model: Model, patterns: RolePatterns, observe_for: ObserveFor | None = None
                   ) -> list[Scenario]:
    observe_for = observe_for or (lambda row_id: None)
    servers = find_servers(model, patterns)
    if any(m.kind == "scenario" or m.kind in FAULT_KINDS for m in model.marks):
        scenarios = _from_marks(model, patterns, servers, observe_for)
    else:
        scenarios = _detected(model, patterns, servers, observe_for)
    return sorted(scenarios, key=lambda s: s.start)


# --- from marks -----------------------------------------------------------------------------------
def _from_marks(model, patterns, servers, observe_for) -> list[Scenario]:
    windows = [m for m in model.marks if m.kind == "scenario"]
    faults = [m for m in model.marks if m.kind in FAULT_KINDS]
    used: set[int] = set()
    scenarios = []
    for window in windows:
        inside = [f for f in faults if window.t <= f.t <= window.end
                  and (f.scenario in (None, window.scenario))]
        fault = inside[0] if inside else None
        if fault is not None:
            used.add(id(fault))
        scenarios.append(_scenario(model, patterns, servers, window.scenario or "unnamed",
                                   window.t, window.end, fault, window, [window.ref]))
    # a fault mark with no scenario mark around it: observe it for its row's window
    loose = sorted((f for f in faults if id(f) not in used), key=lambda f: f.t)
    for n, fault in enumerate(loose):
        row_id = fault.scenario or _guess_id(fault.signal, fault.target, fault.kind,
                                             variant=fault.variant)
        end = fault.t + int((observe_for(row_id) or DEFAULT_OBSERVE_S) * 1e9)
        if n + 1 < len(loose):
            end = min(end, loose[n + 1].t)
        scenarios.append(_scenario(model, patterns, servers, row_id, fault.t - PRE_FAULT_NS,
                                   min(end, model.t_end), fault, None, []))
    return scenarios


def _scenario(model, patterns, servers, row_id, start, end, fault, window, refs) -> Scenario:
    server_pid = (fault and fault.server_pid) or (window and window.server_pid)
    anchor = fault.t if fault else start
    server = None
    if server_pid:
        server = model.process(server_pid, anchor)
    if server is None:
        server = _server_at(model, servers, anchor, fault.pids if fault else [])
    roles = assign_roles(model, server, patterns) if server else None
    server_url = (fault and fault.server_url) or (window and window.server_url) or None
    if fault is None:
        return Scenario(row_id, start, end, None, None, "?", [], server, roles, "marks", refs=refs,
                        server_url=server_url)
    target = {"oom": "oom", "input": "serve"}.get(fault.kind) or fault.target or "pattern"
    fault_t = _first_signal_t(model, fault)
    load = _under_load(model, fault_t)
    return Scenario(row_id, start, end, fault_t, fault.signal, target, list(fault.pids), server,
                    roles, "marks", load=load, refs=[*refs, fault.ref], server_url=server_url,
                    variant=(fault.variant or "unknown") if fault.kind == "input" else None)


def _first_signal_t(model: Model, fault) -> int:
    """When the fault landed: the kernel's record of the first signal the mark names, sent to one
    of its pids inside the mark's span. The mark opens before the injector looks the processes up
    and signals them; on a busy machine that took 90 ms, in which in-flight requests completed
    and were then judged as not failed. Without a kernel record, the mark's start."""
    if fault.kind == "oom" or fault.signal is None:
        return fault.t
    hit = [model.process(pid, fault.t) for pid in fault.pids]
    sent = [r.t for proc in hit if proc is not None for r in proc.signals
            if r.signal == fault.signal and fault.t <= r.t <= fault.end]
    return min(sent, default=fault.t)


def _server_at(model: Model, servers: list[Process], t: int, pids: list[int]) -> Process | None:
    """The server a fault hit: the one whose tree holds a signalled pid, else one alive at t."""
    for server in servers:
        tree_pids = {p.pid for p in [server, *model.descendants(server)]}
        if any(pid in tree_pids for pid in pids):
            return server
    alive = [s for s in servers if s.alive_at(t)]
    return alive[-1] if alive else None


def _under_load(model: Model, t: int) -> bool:
    return any(r.kind != "health" and r.t <= t and (r.end is None or r.end > t)
               for r in model.requests)


def _guess_id(signal: int | None, target: str | None, kind: str, load: bool = False,
              variant: str | None = None) -> str:
    if kind == "oom":
        return OOM_ROW
    if kind == "input":
        return f"abnormal-input/{variant or 'unknown'}"
    fault = signal_name(signal).lower() if signal else "signal"
    return f"{'under-load' if load else 'no-load'}/{fault}/{target or 'pattern'}"


# --- detected -------------------------------------------------------------------------------------
def _detected(model, patterns, servers, observe_for) -> list[Scenario]:
    found = []
    for server in servers:
        roles = assign_roles(model, server, patterns)
        found.extend(_signal_faults(model, roles))
        found.extend(_oom_hogs(model, roles))
    found.sort(key=lambda s: s.fault_t)
    for n, scenario in enumerate(found):
        end = scenario.fault_t + int((observe_for(scenario.id) or DEFAULT_OBSERVE_S) * 1e9)
        if n + 1 < len(found):
            end = min(end, found[n + 1].fault_t)
        scenario.end = min(end, model.t_end)
        scenario.start = max(scenario.fault_t - PRE_FAULT_NS,
                             found[n - 1].end if n else model.t0)
    return found


def _signal_faults(model: Model, roles: Roles) -> list[Scenario]:
    tree_pids = {p.pid for p in roles.tree}
    sent = sorted(((r, p) for p in roles.tree for r in p.signals
                   if r.signal in FAULT_SIGNALS and r.sender_pid not in tree_pids and r.sender_pid),
                  key=lambda rp: rp[0].t)
    groups: list[list] = []
    for receipt, proc in sent:
        last = groups[-1][-1][0] if groups else None
        if last and receipt.sender_pid == last.sender_pid and receipt.t - last.t <= GROUP_GAP_NS:
            groups[-1].append((receipt, proc))
        else:
            groups.append([(receipt, proc)])
    scenarios = []
    for group in groups:
        first = group[0][0]
        procs = [p for _, p in group]
        target = _target_kind(roles, procs)
        load = _under_load(model, first.t)
        row_id = _guess_id(first.signal, target, "signal", load)
        scenarios.append(Scenario(row_id, first.t, first.t, first.t, first.signal, target,
                                  [p.pid for p in procs], roles.server, roles, "detected",
                                  load=load, refs=[r.ref for r, _ in group]))
    return scenarios


def _target_kind(roles: Roles, procs: list[Process]) -> str:
    kinds = {roles.of(p) for p in procs}
    if kinds == {SERVE}:
        return "serve"
    if SERVE in kinds and len(procs) > 1:
        return "all"
    if kinds <= {"worker", "engine"}:
        return "worker"
    return "pattern"


# An OOM hog takes most of what is free (upstream: 92 % or 95 % strict). A holder outside the
# tree that takes less is a bystander on a shared GPU, not a fault.
HOG_MIN_SHARE_OF_FREE = 0.5


def _oom_hogs(model: Model, roles: Roles) -> list[Scenario]:
    server = roles.server
    tree_pids = {p.pid for p in roles.tree}
    first_looks = _first_process_list(model)
    scenarios = []
    for pid, devices in model.gpu.by_pid.items():
        if pid in tree_pids:
            continue
        first = min((t for s in devices.values() for t, v in zip(s.times, s.values) if v > 0),
                    default=None)
        if first is None or not server.alive_at(first) or \
                _bystander(model, devices, first, first_looks):
            continue
        hog = model.process(pid, first)
        t = hog.start if (hog is not None and hog.start and hog.start <= first) else first
        load = _under_load(model, t)
        scenarios.append(Scenario(OOM_ROW, t, t, t, None,
                                  "oom", [pid], server, roles, "detected", load=load,
                                  refs=[hog.start_ref] if hog and hog.start_ref is not None else []))
    return scenarios


def _first_process_list(model: Model) -> dict[int, int]:
    """device -> time of its first process-list sample (what held memory when we first looked)."""
    first: dict[int, int] = {}
    for devices in model.gpu.by_pid.values():
        for device, series in devices.items():
            if series.times:
                first[device] = min(series.times[0], first.get(device, series.times[0]))
    return first


def _bystander(model: Model, devices: dict, first: int, first_looks: dict[int, int]) -> bool:
    """Held memory already in the first process list of its device (there before we looked), or
    never took HOG_MIN_SHARE_OF_FREE of what its device had free just before it started."""
    gpu = model.gpu
    for device, series in devices.items():
        if series.times and series.times[0] == first_looks.get(device) and series.values[0] > 0:
            return True
    for device, series in devices.items():
        before = gpu.devices.get(device)
        sample = before.at(first - 1) if before is not None else None
        if sample is None:
            return False  # free memory unknown: the holder may well be a hog
        free = gpu.totals[device] - sample[0]
        if max(series.values) >= HOG_MIN_SHARE_OF_FREE * free:
            return False
    return True
