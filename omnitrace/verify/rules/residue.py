"""no-residue: nothing of the server's tree is alive residue_s after the fault.

The tree is everything the server forked, recursively, alive at the fault or started after it;
re-parenting does not take an orphan out of it. Zombies count as gone (the upstream suite's rule;
no-zombies checks reaping).
"""
from __future__ import annotations

from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, PROCESSES, Context, Result, Rule, fate


def tree_after_fault(ctx: Context):
    return [p for p in ctx.scenario.roles.tree
            if p.alive_at(ctx.fault_t) or (p.start is not None and p.start >= ctx.fault_t)]


def check(ctx: Context) -> Result:
    tree = tree_after_fault(ctx)
    if not tree:
        return Result(INCONCLUSIVE, summary="the server's tree was not alive at the fault")
    limit = ctx.deadline("residue_s")
    residue = [p for p in tree if p.exit_t is None or p.exit_t > limit]
    if residue and ctx.end < limit and all(p.exit_t is None for p in residue):
        return Result(INCONCLUSIVE, summary=f"the window ends at {ctx.at(ctx.end)}, before the "
                      f"limit, with {len(residue)} process(es) alive")
    gone = [p.exit_t for p in tree if p.exit_t is not None]
    measured = ctx.seconds(max([*gone, *(ctx.end for p in residue if p.exit_t is None)]))
    if residue:
        return Result(FAIL, measured, summary=f"{len(residue)} process(es) of the server's tree "
                      "outlived the limit", evidence=[ctx.cite(fate(ctx, p), p.exit_t or ctx.end,
                                                               p.exit_ref or p.start_ref, p)
                                                      for p in residue])
    last = max(tree, key=lambda p: p.exit_t)
    return Result(PASS, measured, summary=f"all {len(tree)} processes gone",
                  evidence=[ctx.cite(f"last one: {last.label()} exited at {ctx.at(last.exit_t)}",
                                     last.exit_t, last.exit_ref, last)])


RULE = Rule("no-residue", "no process of the server's tree is alive after the limit",
            ("residue_s",), (PROCESSES,), check)
