"""inflight-fail-fast: each request open at the fault ends with 5xx or a connection error within
fail_fast_s. A 2xx is a request the fault did not interrupt; a client timeout, or a request still
open at the scenario's end, is a hang once the limit has passed (before it, undecided).

A 2xx whose end arrived within inflight_grace_s of the fault had already been answered when the
fault landed (its last bytes were on the wire or in the client's socket): the fault could not
interrupt it, so it is counted neither way, and evidence says so."""
from __future__ import annotations

from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, PASS, Context, Result, Rule,
                                         endpoint_absent, served_before)


def check(ctx: Context) -> Result:
    open_at_fault = [r for r in ctx.requests if r.kind != "health" and r.t < ctx.fault_t
                     and (r.end is None or r.end > ctx.fault_t)]
    if not open_at_fault:
        absent = endpoint_absent(ctx, ("chat", "chat-stream", "speech"))
        if absent is not None and not any(r.kind != "health" and r.succeeded for r in ctx.requests):
            return Result(INCONCLUSIVE, summary="no request could be in flight: the server has no "
                          f"endpoint for load ({absent.describe()} answered {absent.status} before "
                          "the fault)", evidence=[ctx.cite("not applicable", absent.end, absent.ref)])
        return Result(INCONCLUSIVE, summary="no request was in flight at the fault")
    limit = ctx.deadline("fail_fast_s")
    grace = ctx.deadline("inflight_grace_s")
    bad, good, undecided, ends, answered = [], [], [], [], []
    absent = {kind for kind in {r.kind for r in open_at_fault} if endpoint_absent(ctx, (kind,))}
    for r in open_at_fault:
        if r.error_type == "refused":   # its connection was refused: it never reached the server
            answered.append(ctx.cite(f"{r.describe()} opened at {ctx.at(r.t)}: its connection was "
                                     f"refused at {ctx.at(r.end)}, it never reached the server: "
                                     "not counted", r.end, r.ref))
            continue
        if r.kind in absent:   # speech on a text model: its 404 is no answer to the fault
            answered.append(ctx.cite(f"{r.describe()} opened at {ctx.at(r.t)}: not applicable, "
                                     "the server has no such endpoint (404 before the fault)",
                                     r.end, r.ref))
            continue
        if r.succeeded and r.end <= grace:
            answered.append(ctx.cite(f"{r.describe()} opened at {ctx.at(r.t)} completed "
                                     f"{r.outcome()} at {ctx.at(r.end)}, within the "
                                     f"{ctx.thresholds['inflight_grace_s']:g} s grace: already "
                                     "answered when the fault landed, not counted", r.end, r.ref))
            continue
        if r.end is None:   # no answer by the window's end: a hang once the limit has passed
            ends.append(ctx.end)
            text = f"{r.describe()} opened at {ctx.at(r.t)} still open at scenario end {ctx.at(ctx.end)}"
            if ctx.end >= limit:
                bad.append(ctx.cite(text + ": a hang", r.t, r.ref))
            else:
                undecided.append(ctx.cite(f"{text}, before the {ctx.thresholds['fail_fast_s']:g} s "
                                          "limit", r.t, r.ref))
            continue
        ends.append(r.end)
        text = f"{r.describe()} opened at {ctx.at(r.t)} ended {r.outcome()} at {ctx.at(r.end)}"
        if r.timed_out and r.end <= limit:   # the client gave up first: not yet a hang
            undecided.append(ctx.cite(f"{text}: the client gave up before the "
                                      f"{ctx.thresholds['fail_fast_s']:g} s limit", r.end, r.ref))
        elif not r.failed:
            bad.append(ctx.cite(text + (": a hang" if r.timed_out else ": not failed"), r.end, r.ref))
        elif r.end > limit:
            bad.append(ctx.cite(text + ": too late", r.end, r.ref))
        else:
            good.append(ctx.cite(text, r.end, r.ref))
    if not ends:
        return Result(INCONCLUSIVE, summary="no request open at the fault could show it: each "
                      f"completed within the {ctx.thresholds['inflight_grace_s']:g} s grace, never "
                      "connected, or had no endpoint", evidence=answered)
    measured = ctx.seconds(max(ends))
    if bad:
        return Result(FAIL, measured, summary=f"{len(bad)} of {len(open_at_fault)} in-flight "
                      "request(s) did not fail fast", evidence=bad)
    if undecided:
        return Result(INCONCLUSIVE, measured, summary=f"{len(undecided)} in-flight request(s) still"
                      " unanswered, before the limit, when the window ended or the client gave up",
                      evidence=undecided)
    return Result(PASS, measured, summary=f"{len(good)} in-flight request(s) failed fast",
                  evidence=good + answered)


RULE = Rule("inflight-fail-fast", "requests in flight at the fault fail (5xx or connection "
            "error) within the limit", ("fail_fast_s", "inflight_grace_s"), (HTTP,), check,
            before=(served_before,))
