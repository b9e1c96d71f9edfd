"""A scenario's window: the model as a recording that stopped at the window's end would show it.

Verdicts are decided inside the window only (docs/verify.md, "the window rule"). What happens
after its end, the matrix runner's clean-up above all (its SIGTERM and SIGKILL to whatever is
left), is not the fault's outcome: an exit, reap, signal, answer or GPU sample after the end is
cut away here, once, and every rule reads this view. A process that exited after the end is alive
at the end; a request answered after it is still open; a signal delivered after it was not yet
taken. The full recording stays reachable through `Window.recording` for evidence that names an
after-window fact as such.

Cutting copies what a rule reads (processes, requests, GPU series), never the events: evidence
still cites events by their index in the timeline.
"""
from __future__ import annotations

from dataclasses import replace

from omnitrace.model.gpu import GpuUsage
from omnitrace.model.http import Request
from omnitrace.model.model import Model
from omnitrace.model.process import Process
from omnitrace.model.roles import Roles
from omnitrace.model.scenarios import Scenario


class Window:
    """The recording cut at `scenario.end`; `model` and `scenario` are what rules decide from."""

    def __init__(self, recording: Model, scenario: Scenario):
        self.recording = recording
        self.end = scenario.end
        self._original: dict[int, Process] = {}       # id(cut process) -> its full-recording self
        self._cut: dict[int, Process | None] = {}     # id(full process) -> its cut, None if after
        self.model = self._cut_model(recording)
        self.scenario = replace(scenario, server=self.process(scenario.server),
                                roles=self._cut_roles(scenario.roles))

    # --- what rules read --------------------------------------------------------------------------
    def process(self, proc: Process | None) -> Process | None:
        """The window's view of a full-recording process; None if it started after the end."""
        return None if proc is None else self._cut.get(id(proc))

    def original(self, proc: Process) -> Process:
        """The full recording's view of a cut process: for after-window context only."""
        return self._original.get(id(proc), proc)

    # --- the cut ----------------------------------------------------------------------------------
    def _cut_model(self, recording: Model) -> Model:
        model = Model(recording.timeline)
        model.window_end = self.end
        model.marks, model.lost = recording.marks, recording.lost
        for proc in recording.processes:
            cut = self._cut_process(proc)
            self._cut[id(proc)] = cut
            if cut is not None:
                self._original[id(cut)] = proc
                model.processes.append(cut)
        for parent, children in recording.children_of.items():
            kept = [self._cut[id(child)] for child in children.values() if self._cut[id(child)]]
            model.children_of[parent] = {id(child): child for child in kept}
        model.requests = [r if r.end is None or r.end <= self.end else _still_open(r)
                          for r in recording.requests_started_by(self.end)]
        model.gpu = _cut_gpu(recording.gpu, self.end)
        model.index_pids()   # the requests are a prefix of the recording's: already in order
        return model

    def _cut_process(self, proc: Process) -> Process | None:
        end = self.end
        if proc.start is not None and proc.start > end:
            return None
        cut = replace(proc, parents=[c for c in proc.parents if c.t <= end] or proc.parents[:1],
                      names=[n for n in proc.names if n[0] <= end] or proc.names[:1],
                      execs=[x for x in proc.execs if x[0] <= end],
                      signals=[_cut_signal(s, end) for s in proc.signals if s.t <= end])
        if proc.exit_t is not None and proc.exit_t > end:
            cut.exit_t = cut.exit_ref = None
        if proc.exit_group_ref is not None and self._event_t(proc.exit_group_ref) > end:
            cut.exit_group_code = cut.exit_group_ref = None
        if proc.reap_t is not None and proc.reap_t > end:
            cut.reap_t = cut.reap_ref = cut.reaped_by = cut.reap_code = cut.reap_signal = None
        if proc.zombie_seen_t is not None and proc.zombie_seen_t > end:
            cut.zombie_seen_t = None
        return cut

    def _event_t(self, ref: int) -> int:
        return self.recording.timeline.events[ref].t

    def _cut_roles(self, roles: Roles | None) -> Roles | None:
        if roles is None:
            return None
        server = self.process(roles.server)
        if server is None:
            return None
        tree, role = [], {}
        for proc in roles.tree:
            cut = self.process(proc)
            if cut is not None:
                tree.append(cut)
                role[id(cut)] = roles.of(proc)
        return Roles(server=server, tree=tree, role=role)


def _cut_signal(receipt, end: int):
    """A signal sent in the window but taken after its end was not yet taken at the end."""
    if receipt.delivered_t is None or receipt.delivered_t <= end:
        return receipt
    return replace(receipt, delivered_t=None, disposition=None, deliver_ref=None)


def _still_open(request: Request) -> Request:
    """A request answered after the window's end had no answer yet at its end."""
    return replace(request, end=None, status=None, error_type=None, openai_error=None,
                   keyword_found=None, body_head=None)


def _cut_gpu(gpu: GpuUsage, end: int) -> GpuUsage:
    cut = GpuUsage()
    cut.totals = gpu.totals
    cut.devices = {device: s.until(end) for device, s in gpu.devices.items()}
    for pid, devices in gpu.by_pid.items():
        kept = {device: s.until(end) for device, s in devices.items()}
        kept = {device: s for device, s in kept.items() if s.stop}
        if kept:
            cut.by_pid[pid] = kept
    return cut
