"""gpu-released: within gpu_release_s of the fault every device the server used is back to its
pre-server baseline (within gpu_tolerance_mib) and no pid of the tree holds GPU memory.

The measured figure is the release latency: from the fault to the last of those moments.
"""
from __future__ import annotations

from omnitrace.verify.rules.base import FAIL, GPU, INCONCLUSIVE, PASS, Context, Result, Rule

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
    """(release time or None, evidence) for one tree pid that held memory."""
    released, last_ref = None, None
    for device, series in gpu.by_pid.get(proc.pid, {}).items():
        held = series.at(ctx.fault_t)
        if not held or held[0] == 0:
            continue
        t_zero = next(((t, ref) for t, used, ref in series.samples_after(ctx.fault_t) if used == 0),
                      None)
        if t_zero is None:
            last = series.at(ctx.end)
            return None, ctx.cite(f"{proc.label()} still holds {_gib(last[0])} on GPU {device} at "
                                  f"{ctx.at(ctx.end)}", None, last[1], proc)
        released = max(released or 0, t_zero[0])
        last_ref = t_zero[1]
    if released is None:
        return ctx.fault_t, None
    return released, ctx.cite(f"{proc.label()} released its GPU memory at {ctx.at(released)}",
                              released, last_ref, proc)


def check(ctx: Context) -> Result:
    gpu, server = ctx.model.gpu, ctx.scenario.server
    tree_pids = {p.pid for p in ctx.scenario.roles.tree}
    devices = gpu.devices_of(tree_pids) or set(gpu.devices)
    if not devices:
        return Result(INCONCLUSIVE, summary="no GPU memory samples")
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
            ("gpu_release_s", "gpu_tolerance_mib"), (GPU,), check)
