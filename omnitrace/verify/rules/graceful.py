"""graceful-shutdown: after SIGTERM/SIGINT each target ran a handler (not the default action),
exited by itself within exit_s of the fault and with a clean status: 0 or 128+signal (what
vLLM's handlers raise as SystemExit), or killed by the same signal re-raised by itself after the
handler (uvicorn)."""
from __future__ import annotations

from omnitrace.events import signal_name
from omnitrace.verify.rules.base import (FAIL, INCONCLUSIVE, KERNEL, PASS, Context, Result, Rule,
                                         worst)


def _one(ctx: Context, proc) -> tuple[str, str, int | None, int | None, float | None]:
    """(verdict, why, t, ref, shutdown seconds) for one target."""
    sig = ctx.scenario.signal
    receipt = next((r for r in proc.signals if r.signal == sig and r.t >= ctx.fault_t - 1_000_000),
                   None)
    if receipt is None:
        return INCONCLUSIVE, f"{proc.label()}: no {_name(sig)} to it was recorded", None, None, None
    if receipt.disposition not in (None, "ignored", "handler"):
        return (FAIL, f"{proc.label()}: {receipt.name} took the {receipt.disposition} action at "
                f"{ctx.at(receipt.delivered_t)}: no handler, no shutdown", receipt.delivered_t,
                receipt.deliver_ref, None)
    # exit_s bounds every path to a pass: whatever the handler did, a shutdown that ends after
    # the limit (or not in the window at all) is not a graceful one.
    if proc.exit_t is None:
        return _still_running(ctx, proc, receipt)
    if proc.exit_t > ctx.deadline("exit_s"):
        return (FAIL, f"{proc.label()}: {_taken(ctx, receipt)}, exited only at "
                f"{ctx.at(proc.exit_t)}, after the {ctx.thresholds['exit_s']:g} s limit",
                proc.exit_t, proc.exit_ref, (proc.exit_t - _when(receipt)) / 1e9)
    if receipt.disposition == "handler":
        return _handled(ctx, proc, receipt)
    # Never taken (discarded at sending, or blocked until the process exited: the resource
    # tracker masks SIGTERM) or ignored: it exited by itself.
    return _ignored(ctx, proc, receipt)


def _when(receipt) -> int:
    return receipt.delivered_t or receipt.t


def _taken(ctx: Context, receipt) -> str:
    """What the process did with the signal, for evidence: 'handler ran at +0.00 s'."""
    if receipt.disposition == "handler":
        return f"handler ran at {ctx.at(receipt.delivered_t)}"
    if receipt.disposition == "ignored" or receipt.result == "ignored":
        return f"ignored {receipt.name} at {ctx.at(_when(receipt))}"
    return f"{receipt.name} sent at {ctx.at(receipt.t)}, never taken"


def _still_running(ctx: Context, proc, receipt):
    """Alive at the window's end: a failure once the window covers exit_s, else undecided."""
    if ctx.end >= ctx.deadline("exit_s"):
        return (FAIL, f"{proc.label()}: {_taken(ctx, receipt)}, still running at the "
                f"{ctx.thresholds['exit_s']:g} s limit{ctx.after_window(proc)}", _when(receipt),
                receipt.deliver_ref or receipt.ref, None)
    return (INCONCLUSIVE, f"{proc.label()}: {_taken(ctx, receipt)}, it did not exit in the window "
            f"(ends at {ctx.at(ctx.end)}){ctx.after_window(proc)}", _when(receipt),
            receipt.deliver_ref or receipt.ref, None)


def _handled(ctx: Context, proc, receipt):
    """The handler ran and the process exited within the limit: how it ended decides."""
    sig = receipt.signal
    took = (proc.exit_t - receipt.delivered_t) / 1e9
    code, killer = proc.exit_status()
    if killer == sig and _reraised(proc, receipt):
        # uvicorn's way: shut down in the handler, then re-raise the signal to itself so the exit
        # status still says "terminated by SIGTERM". The shutdown ran; that is a clean exit.
        return (PASS, f"{proc.label()}: handler at {ctx.at(receipt.delivered_t)}, shut down and "
                f"re-raised {_name(sig)} to itself at {ctx.at(proc.exit_t)}", proc.exit_t,
                proc.exit_ref, took)
    if killer is not None:
        return (FAIL, f"{proc.label()}: handler ran, then it was killed by {_name(killer)} at "
                f"{ctx.at(proc.exit_t)}", proc.exit_t, proc.exit_ref, took)
    if code is None:
        return (INCONCLUSIVE, f"{proc.label()}: exited at {ctx.at(proc.exit_t)}, exit status not "
                "recorded", proc.exit_t, proc.exit_ref, took)
    clean = code in (0, 128 + sig)
    return (PASS if clean else FAIL, f"{proc.label()}: handler at {ctx.at(receipt.delivered_t)}, "
            f"exited with status {code} at {ctx.at(proc.exit_t)}", proc.exit_t,
            proc.exit_group_ref or proc.reap_ref or proc.exit_ref, took)


def _ignored(ctx: Context, proc, receipt):
    """A process already shutting down (its parent told it to, e.g. before "kill all" reached
    it) may ignore a late SIGTERM so its teardown completes: graceful if it then exits by itself
    with status 0 (within the limit: _one checked it). One that dies otherwise is not.
    A process that blocks the signal and reads it with signalfd or sigwait (an init such as
    catatonit, `podman run --init`, or tini) never has it delivered, so no handler shows: its own
    exit with 128+signal, the status a handler's SystemExit gives, is graceful too."""
    code, killer = proc.exit_status()
    when = _when(receipt)
    how = "ignored" if receipt.disposition or receipt.result == "ignored" else "never took"
    if killer is None and how == "never took" and code == 128 + receipt.signal:
        return (PASS, f"{proc.label()}: {receipt.name} sent at {ctx.at(when)} was never "
                f"delivered (blocked: read with signalfd or sigwait, as an init does) and it "
                f"exited by itself with status {code} at {ctx.at(proc.exit_t)}", proc.exit_t,
                proc.exit_group_ref or proc.reap_ref or proc.exit_ref, (proc.exit_t - when) / 1e9)
    if killer is None and code == 0:
        return (PASS, f"{proc.label()}: {how} {receipt.name} at {ctx.at(when)} (already shutting "
                f"down) and exited with status 0 at {ctx.at(proc.exit_t)}", proc.exit_t,
                proc.exit_group_ref or proc.reap_ref or proc.exit_ref, (proc.exit_t - when) / 1e9)
    return (FAIL, f"{proc.label()}: {how} {receipt.name} at {ctx.at(when)} and ended with "
            f"{_status(code, killer)}{_killed_by(ctx, proc)}", when,
            receipt.deliver_ref or receipt.ref, None)


def _killed_by(ctx: Context, proc) -> str:
    """Who sent the signal that killed it, for evidence. A container's init that exits makes the
    kernel SIGKILL the rest of its pid namespace (sent in the init's name): a helper that ignores
    SIGTERM and waits for its pipe to close (multiprocessing's resource tracker) dies that way in
    a container, where outside it exits by itself."""
    fatal = proc.fatal_signal()
    if fatal is None:
        return ""
    sender = ctx.model.process(fatal.sender_pid, fatal.t) if fatal.sender_pid else None
    if sender is None:
        return f" from pid {fatal.sender_pid} {fatal.sender_comm}" if fatal.sender_pid else \
            " from the kernel"
    if sender.ns_pid == 1 and sender.pid != proc.pid:
        return (f" from {sender.label()}, its pid namespace's init: the kernel kills what is "
                "left of the namespace when the init exits")
    return f" from {sender.label()}"


def _status(code, killer) -> str:
    return f"signal {_name(killer)}" if killer else f"status {code}"


def _reraised(proc, handled) -> bool:
    """The fatal delivery came after the handler and was sent by the process itself."""
    fatal = proc.fatal_signal()
    return (fatal is not None and fatal.sender_pid == proc.pid and fatal.delivered_t is not None
            and fatal.delivered_t >= handled.delivered_t)


def _name(sig: int | None) -> str:
    return signal_name(sig) if sig else "signal"


def check(ctx: Context) -> Result:
    if ctx.scenario.signal not in (2, 15):
        return Result(INCONCLUSIVE, summary="graceful shutdown applies to SIGTERM and SIGINT only")
    targets = [p for p in ctx.scenario.targets() if p.alive_at(ctx.fault_t)]
    if not targets:
        return Result(INCONCLUSIVE, summary="no process the fault hit was alive at the fault")
    outcomes = [_one(ctx, proc) + (proc,) for proc in targets]
    verdict = worst(o[0] for o in outcomes)
    durations = [o[4] for o in outcomes if o[4] is not None]
    shown = [o for o in outcomes if o[0] == verdict] if verdict != PASS else outcomes
    evidence = [ctx.cite(why, t, ref, proc) for _, why, t, ref, _, proc in shown]
    summary = {PASS: "every target ran its handler and exited cleanly",
               FAIL: "a target did not shut down gracefully",
               INCONCLUSIVE: "the graceful path could not be confirmed"}[verdict]
    return Result(verdict, max(durations) if durations else None, summary=summary, evidence=evidence)


RULE = Rule("graceful-shutdown", "SIGTERM/SIGINT reach a handler, shutdown runs, exit is clean",
            ("exit_s",), (KERNEL,), check)
