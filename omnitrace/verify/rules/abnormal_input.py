"""The abnormal-input rules (`fault: input` rows; beyond the seed matrix, from vllm-omni's
tests/dfx/reliability data-driven abnormal-input scenarios). One bad request is the fault:

- input-rejected: it is answered 4xx with an OpenAI error body within input_answer_s;
- tree-intact: no process of the server's tree exits or execs in the window (kernel records);
- health-stays-up: /health keeps answering 2xx through the window;
- input-recovery: the next valid chat request succeeds within input_recovery_s of the fault
  (and its answer holds the row's recovery_keyword, when it names one).

The fault time is the input mark's start; the bad request is the `input` request span that
follows it (omnitrace/inject/abnormal.py)."""
from __future__ import annotations

from omnitrace.model.http import Request
from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, KERNEL, PASS, Context, Evidence,
                                         Result, Rule, served_before)

CHAT_KINDS = ("chat", "chat-stream")


def bad_request(ctx: Context) -> Request | None:
    """The abnormal request: the first `input` request sent at or after the fault."""
    sent = [r for r in ctx.requests if r.kind == "input" and ctx.fault_t <= r.t <= ctx.end]
    return min(sent, key=lambda r: r.t, default=None)


def _answer_line(ctx: Context, r: Request) -> str:
    took = f" after {(r.end - r.t) / 1e9:.3f} s" if r.end is not None else ""
    variant = f" [{r.variant}]" if r.variant else ""
    body = f", body {r.body_head[:120]!r}" if r.body_head else ""
    return f"{r.describe()}{variant} sent at {ctx.at(r.t)}: {r.outcome()}{took}{body}"


def _unanswered(ctx: Context, r: Request, deadline: int, what: str) -> Result:
    """A request with no answer (still open, or given up on by the client): a hang only once
    its deadline has passed, else not decided yet."""
    seen_until = r.end if r.end is not None else ctx.end
    ev = [ctx.cite(_answer_line(ctx, r), r.t, r.ref)]
    if seen_until > deadline:
        return Result(FAIL, ctx.seconds(seen_until), summary=f"{what} was still unanswered at "
                      f"{ctx.at(seen_until)}, past its limit at {ctx.at(deadline)}", evidence=ev)
    why = "still open at the window's end" if r.end is None else "the client gave up"
    return Result(INCONCLUSIVE, summary=f"{what} not answered: {why} at {ctx.at(seen_until)}, "
                  f"before its limit at {ctx.at(deadline)}", evidence=ev)


# -- input-rejected ------------------------------------------------------------------------------
def check_rejected(ctx: Context) -> Result:
    bad = bad_request(ctx)
    if bad is None:
        return Result(INCONCLUSIVE, summary="no abnormal request was recorded after the input mark")
    limit_s = ctx.thresholds["input_answer_s"]
    if bad.end is None or bad.timed_out:
        return _unanswered(ctx, bad, bad.t + int(limit_s * 1e9), "the abnormal request")
    took = (bad.end - bad.t) / 1e9
    ev = [ctx.cite(_answer_line(ctx, bad), bad.end, bad.ref)]
    if bad.status is None or bad.cut:
        return Result(FAIL, took, summary="the connection was cut instead of a 4xx answer",
                      evidence=ev)
    if not 400 <= bad.status < 500:
        return Result(FAIL, took, summary=f"answered {bad.status}, not a 4xx", evidence=ev)
    if took > limit_s:
        return Result(FAIL, took, summary=f"answered {bad.status} only after {took:.2f} s",
                      evidence=ev)
    if bad.openai_error is None:
        return Result(INCONCLUSIVE, took, summary="the error body was not recorded", evidence=ev)
    if not bad.openai_error:
        return Result(FAIL, took, summary=f"answered {bad.status} without an OpenAI error body "
                      '{"error": {"message": ...}}', evidence=ev)
    return Result(PASS, took, summary=f"answered {bad.status} with an OpenAI error body",
                  evidence=ev)


# -- tree-intact ---------------------------------------------------------------------------------
def tree_at_fault(ctx: Context) -> Evidence | str:
    """The "before" of tree-intact: the server's tree alive when the bad input was sent."""
    members = [p for p in ctx.scenario.roles.tree if p.alive_at(ctx.fault_t)]
    if not ctx.scenario.server.alive_at(ctx.fault_t):
        return "the server was not running when the abnormal request was sent"
    return ctx.cite(f"before the input: server {ctx.scenario.server.label()} and "
                    f"{len(members) - 1} more process(es) of its tree alive at the fault",
                    ctx.fault_t, None, ctx.scenario.server)


def check_tree(ctx: Context) -> Result:
    members = [p for p in ctx.scenario.roles.tree if p.alive_at(ctx.fault_t)]
    broken = []
    for proc in members:
        if proc.exit_t is not None:
            code, killer = proc.exit_status()
            how = f"killed by signal {killer}" if killer else f"status {code}"
            broken.append(ctx.cite(f"{proc.label()} exited at {ctx.at(proc.exit_t)} ({how})",
                                   proc.exit_t, proc.exit_ref, proc))
        for t, filename, ref in proc.execs:
            if t >= ctx.fault_t:
                broken.append(ctx.cite(f"{proc.label()} replaced its program with {filename} "
                                       f"(exec) at {ctx.at(t)}", t, ref, proc))
    born = _forked_in_window(ctx)
    if broken:
        return Result(FAIL, len(broken), unit="processes", summary=f"{len(broken)} change(s) to "
                      "the server's tree after the abnormal request", evidence=broken + born)
    return Result(PASS, 0, unit="processes", summary=f"all {len(members)} process(es) of the "
                  f"tree ran on to the window's end {ctx.at(ctx.end)} (no exit, no exec recorded)",
                  evidence=born)


def _forked_in_window(ctx: Context) -> list[Evidence]:
    """Context, never a verdict: processes the tree forked after the fault (a replacement for
    a member that exited shows here beside that exit; a compiler a worker runs, on its own)."""
    born = [p for p in ctx.scenario.roles.tree if p.start is not None and p.start >= ctx.fault_t]
    return [ctx.cite(f"{p.label()} forked at {ctx.at(p.start)}, after the fault (context)",
                     p.start, p.start_ref, p) for p in born]


# -- health-stays-up -----------------------------------------------------------------------------
def health_before(ctx: Context) -> Evidence | str:
    """/health answered 2xx after the server started and before the fault."""
    since = ctx.scenario.server.start
    ok = [r for r in ctx.requests if r.kind == "health" and r.succeeded and r.end <= ctx.fault_t
          and (since is None or r.t >= since)]
    if not ok:
        return "no /health 2xx before the abnormal request: nothing shows it was up to stay up"
    last = max(ok, key=lambda r: r.end)
    return ctx.cite(f"before the fault: /health answered {last.outcome()} at {ctx.at(last.end)}",
                    last.end, last.ref)


def check_health(ctx: Context) -> Result:
    probes = [r for r in ctx.requests if r.kind == "health" and r.t >= ctx.fault_t
              and r.end is not None]
    down = [r for r in probes if not r.succeeded]
    if down:
        return Result(FAIL, ctx.seconds(down[0].end), summary=f"{len(down)} /health answer(s) "
                      "not 2xx after the abnormal request", evidence=[
                          ctx.cite(f"/health answered {r.outcome()} at {ctx.at(r.end)}", r.end,
                                   r.ref) for r in down[:5]])
    watch_until = _handled_by(ctx)
    last = max((r.end for r in probes), default=None)
    if last is None or last < watch_until:
        seen = "nothing" if last is None else f"the last at {ctx.at(last)}"
        return Result(INCONCLUSIVE, summary=f"/health was not watched until the abnormal request "
                      f"was handled ({ctx.at(watch_until)}): {seen} (health prober off?)")
    return Result(PASS, ctx.seconds(last), summary=f"{len(probes)} /health answer(s) 2xx from the "
                  f"fault to {ctx.at(last)}", evidence=[ctx.cite(
                      f"/health answered 2xx {len(probes)} time(s), last at {ctx.at(last)}", last)])


def _handled_by(ctx: Context) -> int:
    """Until when "stays up" must be watched: the bad request's answer, or its limit when it
    got none (a server that hangs on it must still be seen up past that)."""
    bad = bad_request(ctx)
    limit = ctx.deadline("input_answer_s")
    if bad is None or bad.end is None or bad.timed_out:
        return limit
    return min(bad.end, limit)


# -- input-recovery ------------------------------------------------------------------------------
def check_recovery(ctx: Context) -> Result:
    bad = bad_request(ctx)
    since = bad.t if bad is not None else ctx.fault_t
    after = [r for r in ctx.requests if r.kind in CHAT_KINDS and r.t >= since]
    if not after:
        return Result(INCONCLUSIVE, summary="no valid chat request was made after the abnormal one")
    first = min(after, key=lambda r: r.t)
    limit_s = ctx.thresholds["input_recovery_s"]
    if first.end is None or first.timed_out:
        return _unanswered(ctx, first, ctx.deadline("input_recovery_s"), "the recovery request")
    took = ctx.seconds(first.end)
    ev = [ctx.cite(_answer_line(ctx, first) + f", {took:.3f} s after the fault", first.end,
                   first.ref)]
    if not first.succeeded:
        return Result(FAIL, took, summary=f"the next valid request failed: {first.outcome()}",
                      evidence=ev)
    if took > limit_s:
        return Result(FAIL, took, summary=f"recovered only {took:.2f} s after the fault", evidence=ev)
    return _keyword(ctx, first, took, ev)


def _keyword(ctx: Context, first: Request, took: float, ev: list) -> Result:
    keyword = ctx.options.get("recovery_keyword")
    if keyword is None:
        return Result(PASS, took, summary=f"the next valid request succeeded {took:.2f} s after "
                      "the fault", evidence=ev)
    if first.keyword_found is None:
        return Result(INCONCLUSIVE, took, summary=f"the answer was not checked for the keyword "
                      f"{keyword!r}", evidence=ev)
    if not first.keyword_found:
        return Result(FAIL, took, summary=f"the answer lacks the keyword {keyword!r}", evidence=ev)
    return Result(PASS, took, summary=f"the next valid request succeeded {took:.2f} s after the "
                  f"fault, its answer holding {keyword!r}", evidence=ev)


RULES = (
    Rule("input-rejected", "the abnormal request is answered 4xx with an OpenAI error body in time",
         ("input_answer_s",), (HTTP,), check_rejected, before=(served_before,)),
    Rule("tree-intact", "no process of the server's tree exits, restarts or is replaced", (),
         (KERNEL,), check_tree, unit="processes", before=(tree_at_fault,)),
    Rule("health-stays-up", "/health stays 2xx through the abnormal request",
         ("input_answer_s",), (HTTP,), check_health, before=(health_before,)),
    Rule("input-recovery", "the next valid request succeeds in time (keyword in its answer)",
         ("input_recovery_s",), (HTTP,), check_recovery, before=(served_before,)),
)
