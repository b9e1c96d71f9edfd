"""The GPU memory hog: a side process that takes the free memory of some devices and holds it.

Like the upstream suite: read free memory, allocate `free * ratio` in 256 MiB chunks (strict: then
64/16/4/1 MiB tails to land within 1 MiB of the target), print `READY: ...` (or `ERROR: ...` and exit
2), hold until killed or until the hold ends. The hold is always bounded, and the hog also leaves
when the process that started it dies, so a crashed runner never leaves a device full.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

from omnitrace.errors import OmnitraceError
from omnitrace.gpu import GpuOutOfMemory
from omnitrace.inject import marks

MIB = 1 << 20
CHUNK = 256 * MIB
TAILS = (64 * MIB, 16 * MIB, 4 * MIB, 1 * MIB)
DEFAULT_RATIO = 0.92    # Qwen3-Omni's; Wan2.2 used 0.95 strict
DEFAULT_HOLD_S = 600.0  # the bound when nobody kills the hog


@dataclass
class Filled:
    device: int
    free_before: int
    target: int
    held: int


class Hold:
    """Every block the hog took, on whichever backend omnitrace.gpu.alloc chose."""

    def __init__(self, allocator) -> None:
        self.allocator, self.blocks = allocator, []

    @property
    def name(self) -> str:
        return self.allocator.name

    def take(self, device: int, nbytes: int) -> None:
        # No release delay: the hog's memory leaving is not what the matrix measures.
        self.blocks.append(self.allocator.allocate(device, nbytes, release_delay_s=0.0))

    def release(self) -> None:
        for block in self.blocks:
            block.free()
        self.blocks.clear()


def fill(hold: Hold, device: int, ratio: float, strict: bool) -> Filled:
    free = hold.allocator.free_memory(device)[0]
    target = int(free * ratio)
    held = 0
    sizes = (CHUNK,) + (TAILS if strict else ())
    for size in sizes:
        while held + size <= target:
            try:
                hold.take(device, size)
            except GpuOutOfMemory:
                break  # someone else took memory meanwhile: try the next, smaller size
            held += size
    return Filled(device, free, target, held)


def run_hog(devices: list[int], ratio: float, strict: bool, hold_s: float, out=sys.stdout) -> int:
    if not 0 < ratio <= 1:
        print(f"ERROR: --ratio {ratio} must be in (0, 1]", file=out, flush=True)
        return 2
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stop.append(signum))
    # The oom mark covers the hog's life, from before the first allocation to after the release.
    mark = marks.tracer().start_span(marks.OOM_SPAN, attributes=marks.clean(
        marks.oom_attributes([os.getpid()], devices, **marks.context_from_env())))
    try:
        return _fill_and_hold(devices, ratio, strict, hold_s, stop, out)
    finally:
        mark.end()
        marks.flush()


def _fill_and_hold(devices, ratio, strict, hold_s, stop, out) -> int:
    from omnitrace.gpu.alloc import open_allocator
    parent = os.getppid()
    try:
        hold = Hold(open_allocator())
        filled = [fill(hold, d, ratio, strict) for d in devices]
    except Exception as exc:  # no device, driver error: the contract is one ERROR line
        print(f"ERROR: {type(exc).__name__}: {exc}", file=out, flush=True)
        return 2
    short = [f for f in filled if f.held == 0 or (strict and f.target - f.held >= MIB)]
    if short:
        f = short[0]
        print(f"ERROR: device {f.device}: held {f.held // MIB} MiB of the {f.target // MIB} MiB "
              f"target ({f.free_before // MIB} MiB were free)", file=out, flush=True)
        hold.release()
        return 2
    summary = " ".join(f"gpu{f.device}={f.held // MIB}MiB/free{f.free_before // MIB}MiB"
                       for f in filled)
    print(f"READY: pid={os.getpid()} backend={hold.name} {summary}", file=out, flush=True)
    deadline = time.monotonic() + hold_s
    # os.getppid() changes when whoever started us died: leave rather than hold a device forever.
    while not stop and time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.05)
    hold.release()
    why = f"signal {stop[0]}" if stop else ("hold ended" if time.monotonic() >= deadline
                                            else "parent gone")
    print(f"RELEASED: {why}", file=out, flush=True)
    return 0


def start_hog(ratio: float = DEFAULT_RATIO, hold_s: float = DEFAULT_HOLD_S, strict: bool = False,
              devices: list[int] | None = None, *, scenario: str | None = None,
              server_url: str | None = None, server_pid: int | None = None):
    """Run the hog as a side process on every device (default) and wait for READY; its oom mark
    names the scenario and server given (handed down as marks.context_from_env reads them).
    Returns the Popen; raises HogFailed with the hog's ERROR line."""
    import subprocess
    from omnitrace.gpu import alloc
    from omnitrace.inject.server import child_env
    env = child_env(OMNITRACE_SCENARIO=scenario, OMNITRACE_SERVER_URL=server_url,
                    OMNITRACE_SERVER_PID=str(server_pid) if server_pid else None)
    if devices is None:
        devices = list(range(alloc.device_count()))
    argv = [sys.executable, "-m", "omnitrace.inject", "oom", "--devices",
            ",".join(map(str, devices)), "--ratio", str(ratio), "--hold", str(hold_s)]
    proc = subprocess.Popen(argv + (["--strict"] if strict else []), stdout=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline().strip()  # READY or ERROR comes first
    if not line.startswith("READY"):
        stop_hog(proc)
        raise HogFailed(f"the OOM hog did not start: {line or 'no output'}")
    return proc


def stop_hog(proc) -> None:
    """Upstream's way: terminate, wait 5 s, kill."""
    import subprocess
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class HogFailed(OmnitraceError):
    pass
