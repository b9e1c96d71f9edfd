"""oom-contract: while a hog holds the GPU's free memory the server degrades, it does not die.

Health answers >= 500 within oom_health_s of the hog's start; every chat and speech request made
under OOM answers >= 500 with an OpenAI error body within oom_s; the serve process stays alive
until the hog is gone. Each missing piece of evidence makes the verdict inconclusive, not a pass.
"""
from __future__ import annotations

from functools import partial

from omnitrace.verify.rules.base import (FAIL, HTTP, INCONCLUSIVE, PASS, Context, Result, Rule,
                                         endpoint_absent, served_before, worst)
from omnitrace.verify.rules.gpu_released import tree_held_gpu

CHAT_KINDS = ("chat", "chat-stream")


def _hog_end(ctx: Context) -> int:
    ends = []
    for pid in ctx.scenario.target_pids:
        hog = ctx.model.process(pid, ctx.fault_t)
        if hog is not None and hog.exit_t is not None:
            ends.append(hog.exit_t)
    return min(max(ends), ctx.end) if ends else ctx.end


def _health(ctx: Context, oom_end: int):
    probes = [r for r in ctx.requests if r.kind == "health" and ctx.fault_t <= r.t <= oom_end
              and r.end is not None]
    limit = ctx.deadline("oom_health_s")
    degraded = next((r for r in probes if r.status is not None and r.status >= 500), None)
    if degraded is not None and degraded.end <= limit:
        return PASS, ctx.cite(f"/health answered {degraded.status} at {ctx.at(degraded.end)}",
                              degraded.end, degraded.ref)
    if not [r for r in probes if r.end <= limit]:
        return INCONCLUSIVE, ctx.cite("no /health probe answered before the health limit")
    seen = [r for r in probes if r.end <= limit][-1]
    return FAIL, ctx.cite(f"/health still answered {seen.outcome()} at {ctx.at(seen.end)}",
                          seen.end, seen.ref)


def _requests(ctx: Context, oom_end: int, kinds: tuple[str, ...], label: str):
    made = [r for r in ctx.requests if r.kind in kinds and ctx.fault_t <= r.t <= oom_end]
    if not made:
        return INCONCLUSIVE, [ctx.cite(f"no {label} request was made under OOM")], []
    limit_ns = int(ctx.thresholds["oom_s"] * 1e9)
    verdicts, evidence, took = [], [], []
    for r in made:
        waited = (r.end if r.end is not None else ctx.end) - r.t
        took.append(waited / 1e9)
        text = f"{r.describe()} at {ctx.at(r.t)}: {r.outcome()} after {waited / 1e9:.2f} s"
        if waited > limit_ns:   # unanswered, given up on, or answered only past the limit
            verdicts.append(FAIL)
            evidence.append(ctx.cite(text + ": a hang", r.t, r.ref))
        elif r.end is None:
            verdicts.append(INCONCLUSIVE)   # not answered yet, but not late yet either
            evidence.append(ctx.cite(f"{r.describe()} at {ctx.at(r.t)}: still open at the "
                                     f"window's end {ctx.at(ctx.end)}, before the "
                                     f"{ctx.thresholds['oom_s']:g} s limit", r.t, r.ref))
        elif r.timed_out:
            verdicts.append(INCONCLUSIVE)   # the client gave up first: not yet a hang
            evidence.append(ctx.cite(text + f": the client gave up before the "
                                     f"{ctx.thresholds['oom_s']:g} s limit", r.end, r.ref))
        elif r.status is None or r.status < 500:
            verdicts.append(FAIL if r.status is not None else INCONCLUSIVE)
            evidence.append(ctx.cite(text + ": expected >= 500", r.end, r.ref))
        elif r.openai_error is None:
            verdicts.append(INCONCLUSIVE)
            evidence.append(ctx.cite(text + ": the response body was not recorded", r.end, r.ref))
        elif not r.openai_error:
            verdicts.append(FAIL)
            evidence.append(ctx.cite(text + ": not an OpenAI error body", r.end, r.ref))
        else:
            verdicts.append(PASS)
            evidence.append(ctx.cite(text, r.end, r.ref))
    return worst(verdicts), evidence, took


def _server_alive(ctx: Context, oom_end: int):
    server = ctx.scenario.server
    if not (ctx.model.source_ran("kernel") or ctx.model.source_ran("procfs")):
        return INCONCLUSIVE, ctx.cite("no process source ran: cannot tell the server stayed up")
    if server.exit_t is not None and server.exit_t <= oom_end:
        return FAIL, ctx.cite(f"server {server.label()} exited at {ctx.at(server.exit_t)} under OOM",
                              server.exit_t, server.exit_ref, server)
    until = "the hog ended" if oom_end < ctx.end else "the window's end, the hog still running"
    return PASS, ctx.cite(f"server {server.label()} alive until {until} at {ctx.at(oom_end)}",
                          oom_end, None, server)


def _applicable_requests(ctx: Context, oom_end: int, kinds: tuple[str, ...], label: str, absent):
    """As _requests, unless the server has no endpoint for the kind (`absent`, from
    endpoint_absent): then not applicable (a pass of this part that says so), never a failure
    for a 404 (speech on a text model)."""
    if absent is None:
        return _requests(ctx, oom_end, kinds, label)
    return PASS, [ctx.cite(f"{label}: not applicable, {absent.describe()} answered "
                           f"{absent.status} at {ctx.at(absent.end)}, before the fault: the server "
                           "has no such endpoint", absent.end, absent.ref)], []


def check(ctx: Context) -> Result:
    oom_end = _hog_end(ctx)
    health = _health(ctx, oom_end)
    no_chat, no_speech = endpoint_absent(ctx, CHAT_KINDS), endpoint_absent(ctx, ("speech",))
    chat = _applicable_requests(ctx, oom_end, CHAT_KINDS, "chat", no_chat)
    speech = _applicable_requests(ctx, oom_end, ("speech",), "speech", no_speech)
    if no_chat is not None and no_speech is not None:   # then neither part made a request
        return Result(INCONCLUSIVE, summary="the server has neither a chat nor a speech endpoint: "
                      "no request can show how it answers under OOM",
                      evidence=chat[1] + speech[1])
    alive = _server_alive(ctx, oom_end)
    parts = [health[0], chat[0], speech[0], alive[0]]
    verdict = worst(parts)
    took = chat[2] + speech[2]
    evidence = [health[1], *chat[1], *speech[1], alive[1]]
    if verdict != PASS:
        keep = verdict
        evidence = [health[1]] * (health[0] == keep) + [*chat[1]] * (chat[0] == keep) + \
            [*speech[1]] * (speech[0] == keep) + [alive[1]] * (alive[0] == keep)
    names = ["health", "chat", "speech", "server alive"]
    summary = ", ".join(f"{n} {v}" for n, v in zip(names, parts))
    return Result(verdict, round(max(took), 6) if took else None, summary=summary,
                  evidence=evidence)


RULE = Rule("oom-contract", "under OOM: health 503, chat and speech >= 500 with an OpenAI error "
            "body, server alive", ("oom_s", "oom_health_s"), (HTTP,), check,
            before=(served_before, partial(tree_held_gpu, consequence="the hog took memory the "
                                           "server does not use")))
