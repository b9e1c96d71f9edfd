"""no-zombies: every process of the tree that exited is reaped by residue_s after the fault.

Reaps come from the kernel (wait4/waitid); without it, procfs seeing state "zombie" after the limit
still proves a failure, but its absence proves nothing (a 0.5 s poll can miss one).
"""
from __future__ import annotations

from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, PROCESSES, Context, Result, Rule
from omnitrace.verify.rules.residue import tree_after_fault


def check(ctx: Context) -> Result:
    limit = ctx.deadline("residue_s")
    tree = tree_after_fault(ctx)
    exited = [p for p in tree if p.exit_t is not None and p.exit_t <= limit]
    if not exited:
        return Result(INCONCLUSIVE, summary="no process of the tree exited by the limit")
    # A short window (a row that settled early) still decides when every process that exited
    # in it was reaped in it: one still running at its end is no zombie (a worker row's server
    # rightly runs on), and what it does after the window is not the fault's outcome.
    if ctx.end < limit and any(p.reap_t is None for p in exited):
        return Result(INCONCLUSIVE, summary=f"the window ends at {ctx.at(ctx.end)}, before the "
                      "limit, with processes not yet reaped")
    if not ctx.model.source_ran("kernel"):
        seen = [p for p in exited if p.zombie_seen_t is not None and p.zombie_seen_t > limit]
        if seen:
            return Result(FAIL, None, summary=f"{len(seen)} zombie(s) seen by procfs after the limit",
                          evidence=[ctx.cite(f"{p.label()} a zombie at {ctx.at(p.zombie_seen_t)}",
                                             p.zombie_seen_t, None, p) for p in seen])
        return Result(INCONCLUSIVE, summary="reaps are recorded by the kernel source only")
    unreaped = [p for p in exited if p.reap_t is None or p.reap_t > limit]
    reaped = [p.reap_t for p in exited if p.reap_t is not None]
    measured = ctx.seconds(max(reaped)) if reaped else None
    if unreaped:
        return Result(FAIL, measured, summary=f"{len(unreaped)} zombie(s) not reaped by the limit",
                      evidence=[ctx.cite(f"{p.label()} exited at {ctx.at(p.exit_t)}; "
                                         f"{_reaped(ctx, p, min(limit, ctx.end))}", p.exit_t,
                                         p.exit_ref, p) for p in unreaped])
    last = max(exited, key=lambda p: p.reap_t)
    evidence = [ctx.cite(f"last reap: {last.label()} by {last.reaper_label()} at "
                         f"{ctx.at(last.reap_t)}", last.reap_t, last.reap_ref, last)]
    running = [p for p in tree if p.exit_t is None]
    if running:
        evidence.append(ctx.cite(f"{len(running)} process(es) of the tree still running at "
                                 f"scenario end {ctx.at(ctx.end)}: not zombies"))
    return Result(PASS, measured, summary=f"{len(exited)} exited process(es) all reaped",
                  evidence=evidence)


def _reaped(ctx: Context, proc, by: int) -> str:
    """Who left it a zombie: the parent it had at `by` (reaping is the parent's duty)."""
    if proc.reap_t is not None:
        return f"reaped only at {ctx.at(proc.reap_t)}, by {proc.reaper_label()}"
    ppid = proc.parent_at(by)
    parent = ctx.model.process(ppid, by) if ppid else None
    who = f"its parent {parent.label()}" if parent else f"its parent pid {ppid}"
    later = ctx.window.original(proc).reap_t
    if later is None:
        return f"{who} never reaped it"
    return (f"{who} had not reaped it by scenario end {ctx.at(ctx.end)}; reaped at "
            f"{ctx.at(later)}, after the window")


RULE = Rule("no-zombies", "every exited process of the tree is reaped within the limit",
            ("residue_s",), (PROCESSES,), check)
