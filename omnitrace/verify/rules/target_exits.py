"""target-exits: every process the fault hit has exited within exit_s of the fault."""
from __future__ import annotations

from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, PROCESSES, Context, Result, Rule, fate


def check(ctx: Context) -> Result:
    targets = [p for p in ctx.scenario.targets() if p.alive_at(ctx.fault_t)]
    if not targets:
        return Result(INCONCLUSIVE, summary="no process the fault hit was alive at the fault")
    limit = ctx.deadline("exit_s")
    evidence, late, unknown, measured = [], [], [], 0.0
    for proc in targets:
        if proc.exit_t is not None:
            measured = max(measured, ctx.seconds(proc.exit_t))
            evidence.append(ctx.cite(f"{proc.label()} exited at {ctx.at(proc.exit_t)}",
                                     proc.exit_t, proc.exit_ref, proc))
            if proc.exit_t > limit:
                late.append(proc)
        elif ctx.end >= limit:
            measured = max(measured, ctx.seconds(ctx.end))
            evidence.append(ctx.cite(fate(ctx, proc), ctx.end, proc.start_ref, proc))
            late.append(proc)
        else:
            unknown.append(proc)
        if proc.exit_t is None:
            evidence += dropped(ctx, proc)
    if late:
        return Result(FAIL, measured, summary=f"{len(late)} of {len(targets)} targets still alive "
                      f"at the limit", evidence=[e for e in evidence if e.pid in {p.pid for p in late}])
    if unknown:
        return Result(INCONCLUSIVE, measured, summary="the window ends before the limit with "
                      f"{len(unknown)} target(s) alive", evidence=evidence)
    return Result(PASS, measured, summary=f"{len(targets)} target(s) exited", evidence=evidence)


def dropped(ctx: Context, proc) -> list:
    """The kernel's own word that it dropped the fault's signal to a target that then lived on
    (signal_generate's result "ignored"): the process set the signal to SIG_IGN, or it is pid 1 of
    a pid namespace, which the kernel shields from every signal it has no handler for, except
    SIGKILL and SIGSTOP from an outer namespace. A server run as a container's init without a
    SIGTERM handler is the case users meet: `podman stop` waits out its timeout, then kills."""
    out = []
    for receipt in proc.signals:
        if receipt.signal != ctx.scenario.signal or receipt.result != "ignored":
            continue
        if not ctx.fault_t <= receipt.t <= ctx.end:
            continue
        why = ("it is pid 1 of its pid namespace (a container's init) and has no handler"
               if getattr(proc, "ns_pid", None) == 1 else
               "it is a pid namespace's init without a handler, or set the signal to SIG_IGN")
        out.append(ctx.cite(f"the kernel ignored {receipt.name} to {proc.label()} at "
                            f"{ctx.at(receipt.t)}: {why}", receipt.t, receipt.ref, proc))
    return out


RULE = Rule("target-exits", "the processes hit by the fault exit within the limit",
            ("exit_s",), (PROCESSES,), check)
