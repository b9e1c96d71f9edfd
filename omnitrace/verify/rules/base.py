"""What every rule shares: the verdict, its evidence, and the context it checks.

A rule is a module with RULE = Rule(id, title, thresholds, sources, check, before=...). check(ctx)
returns a Result; the engine turns missing sources, events of those sources lost inside the
scenario's window, and a "before" (the state the rule claims changes) not seen before the fault,
into "inconclusive" before calling it, so a rule only decides from evidence that exists.
Composition takes the worst (Jepsen's checkers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from omnitrace.events import signal_name
from omnitrace.model.http import url_origin
from omnitrace.model.model import Model
from omnitrace.model.process import Process
from omnitrace.model.scenarios import Scenario
from omnitrace.model.window import Window

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

# Sources a rule may rest on; a tuple means any one of them serves.
PROCESSES = ("kernel", "procfs")
KERNEL = ("kernel",)
GPU = ("gpu",)
HTTP = ("http", "otlp")


def worst(verdicts) -> str:
    return max(verdicts, key=_RANK.__getitem__, default=PASS)


@dataclass
class Evidence:
    """One fact a verdict rests on, citing the event (index into timeline.events) it comes from."""
    text: str
    t: int | None = None
    ref: int | None = None
    pid: int | None = None


@dataclass
class Result:
    verdict: str
    measured: float | None = None
    unit: str = "s"
    summary: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    threshold: float | None = None     # filled by the engine from the row unless the rule sets it


@dataclass
class Context:
    """What a rule checks: the scenario's window and the row's thresholds.

    `model` and `scenario` are the window's view (omnitrace/model/window.py): nothing after the
    window's end decides a verdict. `after_window` may add what came later, marked as such."""
    window: Window
    thresholds: dict[str, float]
    options: dict = field(default_factory=dict)   # the row's non-numeric settings (recovery_keyword)

    @property
    def model(self) -> Model:
        return self.window.model

    @property
    def scenario(self) -> Scenario:
        return self.window.scenario

    @property
    def fault_t(self) -> int:
        return self.scenario.fault_t

    @cached_property
    def requests(self):
        """The HTTP requests this scenario is about: those to its server when the marks name
        the server's URL (a recording may hold many servers, e.g. a whole pytest suite)."""
        url = self.scenario.server_url
        if not url:
            return self.model.requests
        origin = url_origin(url)
        return [r for r in self.model.requests if not r.origin or r.origin == origin]

    def at(self, t: int | None) -> str:
        """A time as an engineer reads it: seconds after the fault."""
        if t is None:
            return "never"
        return f"{(t - self.fault_t) / 1e9:+.2f} s"

    def deadline(self, key: str) -> int:
        return self.fault_t + int(self.thresholds[key] * 1e9)

    @property
    def end(self) -> int:
        return self.scenario.end

    def seconds(self, t: int) -> float:
        return round((t - self.fault_t) / 1e9, 6)

    def cite(self, text: str, t: int | None = None, ref: int | None = None,
             proc: Process | None = None) -> Evidence:
        return Evidence(text, t, ref, proc.pid if proc else None)

    def after_window(self, proc: Process) -> str:
        """How a process alive at the window's end ended later, as context only ('' if it did
        not end, or ended inside the window): '; exited at +101.50 s (SIGKILL), after the window'."""
        full = self.window.original(proc)
        if proc.exit_t is not None or full.exit_t is None:
            return ""
        code, killer = full.exit_status()
        how = signal_name(killer) if killer else (None if code is None else f"status {code}")
        return f"; exited at {self.at(full.exit_t)}{f' ({how})' if how else ''}, after the window"

    def window_too_short(self, key: str) -> Result | None:
        """Inconclusive when the recording stops before the threshold is reached."""
        if self.end < self.deadline(key):
            return Result(INCONCLUSIVE, summary=f"the scenario window ends at {self.at(self.end)}, "
                                                f"before the {self.thresholds[key]:g} s limit")
        return None


# A state a rule's claim changes, which must be seen before the fault ("the before rule"): the
# evidence that it was, or the reason it was not (the verdict is then inconclusive).
Before = Callable[[Context], "Evidence | str"]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    thresholds: tuple[str, ...]          # the threshold keys it reads; the first one is reported
    sources: tuple[tuple[str, ...], ...]  # each entry: one of these sources must have run
    check: Callable[[Context], Result]
    unit: str = "s"
    before: tuple[Before, ...] = ()      # what the engine must see before the fault first


def served_before(ctx: Context) -> Evidence | str:
    """The last complete 2xx this server gave before the fault (since it started): it was
    serving, so a failure after the fault is a change. A prober pointed at the wrong port, or a
    server already broken, gives none."""
    since = ctx.scenario.server.start
    served = [r for r in ctx.requests if r.succeeded and r.end <= ctx.fault_t
              and (since is None or r.t >= since)]
    if not served:
        return ("no 2xx answer from the server before the fault was recorded: nothing shows it was "
                "serving, so no change can be shown (is the prober or the load pointed at it?)")
    last = max(served, key=lambda r: r.end)
    return ctx.cite(f"before the fault: {last.describe()} answered {last.outcome()} at "
                    f"{ctx.at(last.end)}", last.end, last.ref)


NOT_SERVED = (404, 405, 501)   # statuses that say "no such endpoint", not "failed"


def endpoint_absent(ctx: Context, kinds: tuple[str, ...]):
    """The request showing this server has no endpoint for `kinds` (a text model's
    /v1/audio/speech; a plain web service's /v1/chat/completions): answered 404/405/501 before the
    fault, with no 2xx to that kind before it either. None when the endpoint exists or nothing
    says. Such kinds are not applicable: never a failure, never a pass."""
    before = [r for r in ctx.requests if r.kind in kinds and r.end is not None
              and r.end <= ctx.fault_t]
    if any(r.succeeded for r in before):
        return None
    return next((r for r in before if r.status in NOT_SERVED), None)


def fate(ctx: Context, proc: Process) -> str:
    """How a process of the tree ended up, for evidence: 'pid 4123 VLLM::X re-parented to 1 at
    +0.21 s, still alive at scenario end +35.00 s'."""
    parts = []
    for change in proc.parents[1:]:
        if change.t >= ctx.fault_t:
            how = "" if not change.inferred else " (its parent exited)"
            parts.append(f"re-parented to {change.ppid} at {ctx.at(change.t)}{how}")
    if proc.exit_t is None:
        parts.append(f"still alive at scenario end {ctx.at(ctx.end)}")
    else:
        parts.append(f"exited at {ctx.at(proc.exit_t)}")
    return f"{proc.label()} " + ", ".join(parts) + ctx.after_window(proc)
