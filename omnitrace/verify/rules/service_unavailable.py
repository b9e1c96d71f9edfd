"""service-unavailable: after the fault, health and requests turn 5xx (or connections are
refused) within unavailable_s and stay so: a 2xx after the service went down is a failure."""
from __future__ import annotations

from omnitrace.verify.rules.base import FAIL, HTTP, INCONCLUSIVE, PASS, Context, Result, Rule


def check(ctx: Context) -> Result:
    after = [r for r in ctx.requests
             if ctx.fault_t <= r.t <= ctx.end and r.end is not None]
    limit = ctx.deadline("unavailable_s")
    down = next((r for r in sorted(after, key=lambda r: r.end) if r.failed), None)
    if down is None or down.end > limit:
        answered = [r for r in after if r.end <= min(limit, ctx.end)]
        if not answered and ctx.end < limit:
            return Result(INCONCLUSIVE, summary="no health probe or request answered after the fault")
        if not answered:
            return Result(INCONCLUSIVE, summary="no health probe or request answered before the limit")
        served = [r for r in answered if r.succeeded][-3:]
        measured = ctx.seconds(down.end) if down else None
        return Result(FAIL, measured, summary="still serving at the limit" if down is None else
                      f"turned unavailable only at {ctx.at(down.end)}",
                      evidence=[ctx.cite(f"{r.describe()} answered {r.outcome()} at {ctx.at(r.end)}",
                                         r.end, r.ref) for r in served])
    down_ev = ctx.cite(f"{down.describe()} answered {down.outcome()} at {ctx.at(down.end)}",
                       down.end, down.ref)
    back = [r for r in after if r.t >= down.end and r.succeeded]
    if back:
        return Result(FAIL, ctx.seconds(down.end), summary=f"{len(back)} request(s) served after "
                      "the service went down", evidence=[down_ev] + [
                          ctx.cite(f"{r.describe()} answered {r.outcome()} at {ctx.at(r.end)}",
                                   r.end, r.ref) for r in back[:5]])
    return Result(PASS, ctx.seconds(down.end), summary="unavailable and stayed so",
                  evidence=[down_ev])


RULE = Rule("service-unavailable", "health and requests turn 5xx or refused within the limit "
            "and stay so", ("unavailable_s",), (HTTP,), check)
