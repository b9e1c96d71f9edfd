"""cleanup-order: who goes first when the server goes down.

Graceful (SIGTERM/SIGINT): the server shuts its workers down before it exits itself; a worker that
outlives the server was abandoned, not cleaned up. SIGKILL: the server cannot clean up, so its
children must follow it by themselves (parent-death handling) within child_follow_s.
"""
from __future__ import annotations

from omnitrace.model.roles import ENGINE, WORKER
from omnitrace.verify.rules.base import (FAIL, INCONCLUSIVE, PASS, PROCESSES, Context, Result, Rule,
                                         fate)


def _graceful(ctx: Context, server) -> Result:
    workers = [p for p in ctx.scenario.roles.members(WORKER, ENGINE) if p.alive_at(ctx.fault_t)]
    if not workers:
        return Result(INCONCLUSIVE, summary="no worker was alive at the fault")
    late = [p for p in workers if p.exit_t is None or p.exit_t > server.exit_t]
    last = max((p.exit_t for p in workers if p.exit_t is not None), default=None)
    measured = None if last is None else round((last - server.exit_t) / 1e9, 6)
    server_ev = ctx.cite(f"server {server.label()} exited at {ctx.at(server.exit_t)}",
                         server.exit_t, server.exit_ref, server)
    if late:
        return Result(FAIL, measured, summary=f"{len(late)} worker(s) outlived the server",
                      evidence=[server_ev] + [ctx.cite(fate(ctx, p), p.exit_t or ctx.end,
                                                       p.exit_ref, p) for p in late], threshold=0)
    return Result(PASS, measured, summary=f"{len(workers)} worker(s) exited before the server",
                  evidence=[ctx.cite(f"{p.label()} exited at {ctx.at(p.exit_t)}", p.exit_t,
                                     p.exit_ref, p) for p in workers] + [server_ev], threshold=0)


def _children_follow(ctx: Context, server) -> Result:
    children = [p for p in ctx.model.descendants(server) if p.alive_at(ctx.fault_t)]
    if not children:
        return Result(INCONCLUSIVE, summary="the server had no live children at the fault")
    limit = server.exit_t + int(ctx.thresholds["child_follow_s"] * 1e9)
    if ctx.end < limit and any(p.exit_t is None for p in children):
        return Result(INCONCLUSIVE, summary="the window ends before the limit with children alive")
    follow = [((p.exit_t or ctx.end) - server.exit_t) / 1e9 for p in children]
    late = [p for p in children if p.exit_t is None or p.exit_t > limit]
    server_ev = ctx.cite(f"server {server.label()} exited at {ctx.at(server.exit_t)}",
                         server.exit_t, server.exit_ref, server)
    evidence = [server_ev] + [ctx.cite(fate(ctx, p), p.exit_t or ctx.end, p.exit_ref, p)
                              for p in (late or children)]
    if late:
        return Result(FAIL, round(max(follow), 6), summary=f"{len(late)} child process(es) "
                      "outlived the killed server", evidence=evidence)
    return Result(PASS, round(max(follow), 6), summary=f"{len(children)} children followed the "
                  "server", evidence=evidence)


def check(ctx: Context) -> Result:
    server = ctx.scenario.server
    if server.exit_t is None or server.exit_t < ctx.fault_t:
        return Result(INCONCLUSIVE, summary="the server did not exit in the window "
                      "(see target-exits)")
    if ctx.scenario.signal == 9:
        return _children_follow(ctx, server)
    return _graceful(ctx, server)


RULE = Rule("cleanup-order", "workers exit before the server; children follow a killed server",
            ("child_follow_s",), (PROCESSES,), check)
