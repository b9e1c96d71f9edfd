"""service-unavailable: after the fault, health and requests turn 5xx (or connections are
refused) within unavailable_s and stay so: a 2xx after the service went down is a failure.

"Stay so" is watched for unavailable_hold_s after the first failed answer: the window must reach
that far and something must have been asked at or after its end (else inconclusive), so a health
endpoint that flaps back to 200 within the hold fails instead of passing unwatched."""
from __future__ import annotations

from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, PASS, Context, Result, Rule,
                                         served_before)


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
    unwatched = _hold_unwatched(ctx, down, after)
    if unwatched:
        return Result(INCONCLUSIVE, ctx.seconds(down.end), summary=unwatched, evidence=[down_ev])
    return Result(PASS, ctx.seconds(down.end), summary="unavailable and stayed so for the "
                  f"{ctx.thresholds['unavailable_hold_s']:g} s hold", evidence=[down_ev])


def _hold_unwatched(ctx: Context, down, after) -> str:
    """Why "stayed unavailable" was not watched for the whole hold ('' when it was)."""
    hold_s = ctx.thresholds["unavailable_hold_s"]
    hold_end = down.end + int(hold_s * 1e9)
    if ctx.end < hold_end:
        return (f"went down at {ctx.at(down.end)}, but the window ends at {ctx.at(ctx.end)}, "
                f"before the {hold_s:g} s hold was watched")
    last = max(r.end for r in after)
    if last < hold_end:
        return (f"went down at {ctx.at(down.end)}; nothing was asked after {ctx.at(last)}, so "
                f"staying down for the {hold_s:g} s hold was not watched (health prober off?)")
    return ""


RULE = Rule("service-unavailable", "health and requests turn 5xx or refused within the limit "
            "and stay so", ("unavailable_s", "unavailable_hold_s"), (HTTP,), check,
            before=(served_before,))
