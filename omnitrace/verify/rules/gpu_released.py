"""gpu-released: within gpu_release_s of the fault every device the server used is back to its
pre-server baseline (within gpu_tolerance_mib) and no pid of the tree holds GPU memory.

A release needs a "before": a tree that held no GPU memory at the fault (a server on a CPU, a
device it never used) releases nothing, and the verdict is inconclusive, never "0.000 s".

The measured figure is the release latency: from the fault to the last of those moments.
"""
from __future__ import annotations

from functools import partial

from omnitrace.verify.rules.base import (FAIL, GPU, INCONCLUSIVE, PASS, Context, Evidence, Result,
                                         Rule)

MIB = 1 << 20


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _device_release(ctx, device, series, baseline, tolerance, limit):
    """(release time or None, evidence) for one device."""
    at_fault = series.at(ctx.fault_t)
    if at_fault and at_fault[0] <= baseline + tolerance:
        return ctx.fault_t, ctx.cite(f"GPU {device} at {_gib(at_fault[0])} at the fault, baseline "
                                     f"{_gib(baseline)}", ctx.fault_t, at_fault[1])
    for t, used, ref in series.samples_after(ctx.fault_t):
        if used <= baseline + tolerance:
            return t, ctx.cite(f"GPU {device} back to {_gib(used)} (baseline {_gib(baseline)}) at "
                               f"{ctx.at(t)}", t, ref)
    last = series.at(min(limit, ctx.end))
    return None, ctx.cite(f"GPU {device} still at {_gib(last[0])} at {ctx.at(min(limit, ctx.end))}"
                          f", baseline {_gib(baseline)}", None, last[1])


def _holder_release(ctx, proc, gpu):
    """(release time or None, evidence) for one tree pid: the first zero after the last time it
    held memory since the fault (one that let go and took memory again has not released it)."""
    released, last_ref = None, None
    for device, series in gpu.by_pid.get(proc.pid, {}).items():
        since = list(_from_fault(ctx, series))
        if not any(used for _, used, _ in since):
            continue
        if since[-1][1] > 0:
            return None, ctx.cite(f"{proc.label()} still holds {_gib(since[-1][1])} on GPU {device} "
                                  f"at {ctx.at(ctx.end)}", None, since[-1][2], proc)
        last_held = max(n for n, (_, used, _) in enumerate(since) if used)
        t_zero, _, ref = since[last_held + 1]
        if released is None or t_zero > released:
            released, last_ref = t_zero, ref
    if released is None:
        return ctx.fault_t, None
    return released, ctx.cite(f"{proc.label()} released its GPU memory at {ctx.at(released)}",
                              released, last_ref, proc)


def _from_fault(ctx, series):
    """The sample in force at the fault, then every later one in the window."""
    at_fault = series.at(ctx.fault_t)
    if at_fault is not None:
        yield ctx.fault_t, at_fault[0], at_fault[1]
    yield from series.samples_after(ctx.fault_t)


def tree_held_gpu(ctx: Context, consequence: str) -> Evidence | str:
    """Evidence that the server's tree held GPU memory at the fault, or why that was not seen
    (ending in `consequence`): the "before" of every claim about its GPU memory. From the
    per-process samples when they show the tree; without them (a driver that lists no pids, e.g.
    in a container), from a device standing above its level when the server started."""
    gpu, tree, server = ctx.model.gpu, ctx.scenario.roles.tree, ctx.scenario.server
    if not gpu.devices:
        return "no GPU memory samples (the gpu source did not run, or saw no device)"
    for proc in tree:
        for device, series in gpu.by_pid.get(proc.pid, {}).items():
            held = series.at(ctx.fault_t)
            if held and held[0] > 0:
                return ctx.cite(f"{proc.label()} held {_gib(held[0])} on GPU {device} at the fault",
                                ctx.fault_t, held[1], proc)
    if not gpu.devices_of({p.pid for p in tree}):
        if server.start is None:
            return ("the server started before the recording and no GPU process list shows its "
                    "tree: what it held cannot be told")
        tolerance = int(ctx.thresholds.get("gpu_tolerance_mib", 0) * MIB)
        for device, series in sorted(gpu.devices.items()):
            base, now = series.at(server.start), series.at(ctx.fault_t)
            if base and now and now[0] > base[0] + tolerance:
                return ctx.cite(f"GPU {device} at {_gib(now[0])} at the fault, {_gib(base[0])} when "
                                "the server started", ctx.fault_t, now[1])
    return f"the server's tree held no GPU memory before the fault: {consequence}"


def check(ctx: Context) -> Result:
    gpu, server = ctx.model.gpu, ctx.scenario.server
    tree_pids = {p.pid for p in ctx.scenario.roles.tree}
    devices = gpu.devices_of(tree_pids) or set(gpu.devices)   # not empty: tree_held_gpu saw one
    if server.start is None:
        return Result(INCONCLUSIVE, summary="the server started before the recording: no baseline")
    limit = ctx.deadline("gpu_release_s")
    tolerance = int(ctx.thresholds["gpu_tolerance_mib"] * MIB)
    times, evidence, stuck = [], [], []
    for device in sorted(devices):
        series = gpu.devices.get(device)
        base = series.at(server.start) if series else None
        if base is None:
            return Result(INCONCLUSIVE, summary=f"no GPU {device} sample before the server started:"
                          " no baseline")
        t, ev = _device_release(ctx, device, series, base[0], tolerance, limit)
        (times.append(t) if t is not None else stuck.append(ev))
        evidence.append(ev)
    for proc in ctx.scenario.roles.tree:
        if proc.pid in gpu.by_pid:
            t, ev = _holder_release(ctx, proc, gpu)
            if ev is not None:
                evidence.append(ev)
            (times.append(t) if t is not None else stuck.append(ev))
    late = [t for t in times if t > limit]
    measured = ctx.seconds(max(times)) if times else None
    if stuck or late:
        if stuck and ctx.end < limit:
            return Result(INCONCLUSIVE, measured, summary="the window ends before the limit with "
                          "memory still held", evidence=stuck)
        return Result(FAIL, measured if not stuck else ctx.seconds(ctx.end),
                      summary="GPU memory not released within the limit",
                      evidence=stuck + [e for e in evidence if e.t is not None and e.t > limit])
    return Result(PASS, measured, summary=f"released {measured:.3f} s after the fault",
                  evidence=evidence)


RULE = Rule("gpu-released", "GPU memory back to the pre-server baseline within the limit",
            ("gpu_release_s", "gpu_tolerance_mib"), (GPU,), check,
            before=(partial(tree_held_gpu, consequence="nothing to release"),))
