"""Recovery under a supervisor: after the server dies, the supervisor starts a new one.

Three rules, one claim each (docs/verify.md):

- old-incarnation-gone: when the new server reports healthy (at the latest at recovery_s), no
  process of the old incarnation is alive and none holds GPU memory. A restarted server beside
  the old engine still running is vllm#55510: two engines on one device, or a new one that cannot
  get the memory the old one keeps.
- recovers-within: a new server reports healthy within recovery_s; its summary tells "recovered
  cleanly" from "recovered while the old incarnation still runs beside it" from "could not
  recover".
- first-request-recovers: the first request sent after the new server reported healthy succeeds
  within recovery_request_s of that moment.

Which process is the new server comes from the kernel's fork records: the old server's parent
(the supervisor) and what it forked after the fault. HTTP answers carry no pid, so "the new
server reported healthy" is the first 2xx /health answer to a request sent after the first new
incarnation was forked and after the old server exited (before that, the port could be the old
one's); with no /health asked after the restart (`--health-rate 0`), the first 2xx of any request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omnitrace.events import signal_name
from omnitrace.model.http import Request
from omnitrace.model.process import Process
from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, KERNEL, PASS, Context, Evidence,
                                         Result, Rule, fate, served_before)
from omnitrace.verify.rules.residue import tree_after_fault


@dataclass
class Restart:
    """What the window shows of the restart: the supervisor, what it forked after the fault, and
    the first healthy answer of a new incarnation (with the incarnation alive at that answer)."""
    old: Process
    supervisor: Process | None
    incarnations: list[Process] = field(default_factory=list)
    healthy: Request | None = None
    new: Process | None = None

    @property
    def healthy_t(self) -> int | None:
        return self.healthy.end if self.healthy else None


def restart(ctx: Context) -> Restart:
    old = ctx.scenario.server
    model = ctx.model
    supervisor = model.process(old.ppid, old.start) if old.ppid not in (None, 0, 1) else None
    found = Restart(old, supervisor)
    if supervisor is None:
        return found
    found.incarnations = sorted(
        (c for c in model.children_of.get(supervisor.pid, {}).values()
         if c.ppid == supervisor.pid and c.start is not None and c.start >= ctx.fault_t
         and (supervisor.start is None or c.start >= supervisor.start)), key=lambda c: c.start)
    if found.incarnations and old.exit_t is not None:
        found.healthy, found.new = _first_healthy(ctx, found, max(found.incarnations[0].start,
                                                                  old.exit_t))
    return found


def _first_healthy(ctx: Context, found: Restart, since: int):
    """The first 2xx to a request sent after `since`, from /health if any was asked, and the
    incarnation alive when it was answered."""
    asked = [r for r in ctx.requests if r.t >= since and r.end is not None]
    health = [r for r in asked if r.kind == "health"]
    for request in sorted(health or asked, key=lambda r: r.end):
        if not request.succeeded:
            continue
        alive = [p for p in found.incarnations if p.start <= request.t and p.alive_at(request.end)]
        if alive:
            return request, alive[-1]
    return None, None


def _old_tree_alive(ctx: Context) -> Evidence | str:
    """The "before": the old incarnation was running at the fault."""
    tree = [p for p in ctx.scenario.roles.tree if p.alive_at(ctx.fault_t)]
    if not tree:
        return "the server's tree was not alive at the fault: nothing to restart"
    server = ctx.scenario.server
    return ctx.cite(f"before the fault: {server.label()} and {len(tree) - 1} process(es) of its "
                    "tree alive", ctx.fault_t, server.start_ref, server)


def _moment(ctx: Context, found: Restart) -> tuple[int, str]:
    """When the old incarnation must be gone: the new server's healthy answer, or the recovery
    limit when none came by then."""
    limit = ctx.deadline("recovery_s")
    if found.healthy_t is not None and found.healthy_t <= limit:
        return found.healthy_t, f"the new server's healthy answer at {ctx.at(found.healthy_t)}"
    return limit, (f"the {ctx.thresholds['recovery_s']:g} s recovery limit (no new server "
                   "healthy by then)")


def _holds_gpu(ctx: Context, proc: Process, t: int) -> int:
    return ctx.model.gpu.held_at(proc.pid, t) if ctx.model.source_ran("gpu") else 0


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def check_old_gone(ctx: Context) -> Result:
    found = restart(ctx)
    moment, when = _moment(ctx, found)
    if ctx.end < moment:
        return Result(INCONCLUSIVE, summary=f"the window ends at {ctx.at(ctx.end)}, before the new "
                      "server reported healthy and before the recovery limit")
    old = tree_after_fault(ctx)
    stayed = _stayed(ctx, moment)
    exits = [p.exit_t for p in old if p.exit_t is not None]
    measured = ctx.seconds(max(exits)) if exits and len(exits) == len(old) else None
    if stayed:
        return Result(FAIL, measured, summary=f"{len(stayed)} process(es) of the old incarnation "
                      f"{_what_stayed(stayed, moment)} at {when}",
                      evidence=[_survivor(ctx, p, held, moment, when) for p, held in stayed])
    last = max(old, key=lambda p: p.exit_t)
    unchecked = "" if ctx.model.source_ran("gpu") else " (no GPU samples: its memory not checked)"
    return Result(PASS, measured, summary=f"the old incarnation was gone at {ctx.at(last.exit_t)}, "
                  f"before {when}{unchecked}",
                  evidence=[ctx.cite(f"last of the old incarnation: {last.label()} exited at "
                                     f"{ctx.at(last.exit_t)}", last.exit_t, last.exit_ref, last)])


def _stayed(ctx: Context, moment: int) -> list[tuple[Process, int]]:
    """(process, GPU bytes it held) for each process of the old incarnation not gone at `moment`:
    alive, holding GPU memory (a release can lag an exit), or forked after it."""
    held = [(p, _holds_gpu(ctx, p, moment)) for p in tree_after_fault(ctx)]
    return [(p, n) for p, n in held
            if p.alive_at(moment) or n or (p.start is not None and p.start > moment)]


def _what_stayed(stayed: list[tuple[Process, int]], moment: int) -> str:
    alive = any(not p.exited_by(moment) for p, _ in stayed)
    holding = any(held for _, held in stayed)
    return " or ".join(w for w, on in (("alive", alive), ("holding GPU memory", holding)) if on)


def _survivor(ctx: Context, proc: Process, held: int, moment: int, when: str) -> Evidence:
    memory = f", holding {_gib(held)} of GPU memory" if held else ""
    state = "alive" if proc.alive_at(moment) else "not gone"
    return ctx.cite(f"{state} at {when}{memory}: {fate(ctx, proc)}", moment,
                    proc.start_ref if proc.alive_at(moment) else proc.exit_ref, proc)


def check_recovers(ctx: Context) -> Result:
    found = restart(ctx)
    limit = ctx.deadline("recovery_s")
    healthy = found.healthy
    if healthy is not None and healthy.end <= limit:
        return _recovered(ctx, found)
    if healthy is None and ctx.end < limit:
        return Result(INCONCLUSIVE, summary=f"no new server healthy when the window ends at "
                      f"{ctx.at(ctx.end)}, before the {ctx.thresholds['recovery_s']:g} s limit")
    evidence = _restart_story(ctx, found)
    if healthy is not None:
        return Result(FAIL, ctx.seconds(healthy.end), summary=f"recovered only at "
                      f"{ctx.at(healthy.end)}, after the limit", evidence=evidence)
    return Result(FAIL, summary=f"could not recover: {_why_not(ctx, found)}", evidence=evidence)


def _recovered(ctx: Context, found: Restart) -> Result:
    t = found.healthy_t
    stayed = _stayed(ctx, t)
    beside = [p for p, _ in stayed]
    how = ("cleanly" if not beside else f"while {len(beside)} process(es) of the old incarnation "
           f"were still {_what_stayed(stayed, t)} beside it (old-incarnation-gone)")
    answer = ctx.cite(f"{found.healthy.describe()} answered {found.healthy.outcome()} at "
                      f"{ctx.at(t)}, while {found.new.label()} ran (forked by "
                      f"{found.supervisor.label()} at {ctx.at(found.new.start)})",
                      t, found.healthy.ref, found.new)
    return Result(PASS, ctx.seconds(t), summary=f"recovered {how} in {ctx.seconds(t):.2f} s",
                  evidence=[answer] + [ctx.cite(f"beside it: {fate(ctx, p)}", t, p.start_ref, p)
                                       for p in beside[:5]])


def _why_not(ctx: Context, found: Restart) -> str:
    if found.old.exit_t is None:
        return f"the old server {found.old.label()} never exited, so nothing restarted it"
    if found.supervisor is None:
        return "the old server had no parent that could restart it"
    if not found.incarnations:
        return f"its parent {found.supervisor.label()} forked no new server after the fault"
    n = len(found.incarnations)
    last = found.incarnations[-1]
    # every start exited and no fork came after the last: the supervisor gave up (FATAL)
    ended = (f"; the last exited at {ctx.at(last.exit_t)} and none was forked after it"
             if all(p.exit_t is not None for p in found.incarnations) else "")
    return (f"{found.supervisor.label()} started {n} new server(s) after the fault; none reported "
            f"healthy{ended}")


def _restart_story(ctx: Context, found: Restart) -> list[Evidence]:
    """Each incarnation the supervisor forked after the fault and how it ended (the first 10)."""
    story = []
    for proc in found.incarnations[:10]:
        end = (f"exited at {ctx.at(proc.exit_t)}{_status(proc)}" if proc.exit_t is not None
               else f"still running at {ctx.at(ctx.end)}")
        story.append(ctx.cite(f"{proc.label()} forked by {found.supervisor.label()} at "
                              f"{ctx.at(proc.start)}, {end}", proc.start, proc.start_ref, proc))
    return story


def _status(proc: Process) -> str:
    code, killer = proc.exit_status()
    if killer:
        return f" ({signal_name(killer)})"
    return "" if code is None else f" (status {code})"


def check_first_request(ctx: Context) -> Result:
    found = restart(ctx)
    if found.healthy is None:
        return Result(INCONCLUSIVE, summary="no new server reported healthy in the window "
                      "(recovers-within): there was no request after a recovery to judge")
    healthy_t = found.healthy_t
    after = sorted((r for r in ctx.requests if r.kind != "health" and r.t >= healthy_t),
                   key=lambda r: r.t)
    if not after:
        return Result(INCONCLUSIVE, summary=f"no request was sent after the new server reported "
                      f"healthy at {ctx.at(healthy_t)}")
    first = after[0]
    limit = healthy_t + int(ctx.thresholds["recovery_request_s"] * 1e9)
    sent = ctx.cite(f"first request after recovery: {first.describe()} sent at {ctx.at(first.t)}, "
                    f"answered {first.outcome()}" + (f" at {ctx.at(first.end)}" if first.end else ""),
                    first.end or first.t, first.ref)
    if first.end is None or first.end > limit:
        if ctx.end < limit:
            return Result(INCONCLUSIVE, summary="the first request after recovery was still open "
                          "when the window ended, before the limit", evidence=[sent])
        return Result(FAIL, summary="the first request after recovery got no answer within the "
                      "limit" if first.end is None or not first.succeeded else
                      f"the first request after recovery succeeded only at {ctx.at(first.end)}, "
                      "after the limit", evidence=[sent])
    measured = round((first.end - healthy_t) / 1e9, 6)
    if not first.succeeded:
        return Result(FAIL, measured, summary=f"the first request after recovery failed: "
                      f"{first.outcome()}", evidence=[sent])
    return Result(PASS, measured, summary=f"succeeded {measured:.2f} s after the new server "
                  f"reported healthy (fault to first success {ctx.seconds(first.end):.2f} s)",
                  evidence=[sent])


OLD_GONE = Rule("old-incarnation-gone", "no process of the old incarnation alive or holding GPU "
                "memory when the new server reports healthy", ("recovery_s",), (KERNEL, HTTP),
                check_old_gone, before=(_old_tree_alive,))
RECOVERS = Rule("recovers-within", "a new server reports healthy within the limit",
                ("recovery_s",), (KERNEL, HTTP), check_recovers, before=(served_before,))
FIRST_REQUEST = Rule("first-request-recovers", "the first request after recovery succeeds within "
                     "the limit", ("recovery_request_s",), (KERNEL, HTTP), check_first_request,
                     before=(served_before,))

RULES = (OLD_GONE, RECOVERS, FIRST_REQUEST)
