"""stop-accepting: stop_accepting_s after SIGTERM/SIGINT the server answers no new request with a
2xx. Measured: when the last new request that was still served had started."""
from __future__ import annotations

from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, PASS, Context, Result, Rule,
                                         served_before)


def check(ctx: Context) -> Result:
    grace = ctx.deadline("stop_accepting_s")
    new = [r for r in ctx.requests if ctx.fault_t <= r.t <= ctx.end]
    accepted = [r for r in new if r.succeeded]
    measured = ctx.seconds(max(r.t for r in accepted)) if accepted else 0.0
    late = [r for r in accepted if r.t > grace]
    if late:
        return Result(FAIL, measured, summary=f"{len(late)} request(s) started after the grace "
                      "period were served", evidence=[
                          ctx.cite(f"{r.describe()} started at {ctx.at(r.t)} answered "
                                   f"{r.outcome()}", r.t, r.ref) for r in late[:5]])
    refused = [r for r in new if r.t > grace and r.end is not None]
    if not refused:
        return Result(INCONCLUSIVE, measured, summary="no request started after the grace period")
    first = refused[0]
    return Result(PASS, measured, summary=f"{len(refused)} later request(s) were not served",
                  evidence=[ctx.cite(f"{first.describe()} started at {ctx.at(first.t)} answered "
                                     f"{first.outcome()}", first.t, first.ref)])


RULE = Rule("stop-accepting", "no new request is served after the grace period following "
            "SIGTERM", ("stop_accepting_s",), (HTTP,), check, before=(served_before,))
