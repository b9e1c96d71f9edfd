"""The GPU proof behind docs/performance.md, in two parts (scripts/gpu-check.sh runs both):

    python scripts/gpu_check.py workload NOTES.json [--gib N]
        run under `omnitrace record`: one child allocates N GiB and is SIGKILLed; a second
        allocates N GiB and exits gracefully on SIGTERM. Its own clock readings go to NOTES.json,
        a fallback for a recording without kernel events.
    python scripts/gpu_check.py report TIMELINE NOTES.json
        reads the timeline and prints kill->exit, kill->reap and kill->release latencies, and
        the timeline's size.

Memory comes from omnitrace.gpu.alloc: CUDA through torch on a GPU machine, the simulated device
elsewhere (so the script itself can be tried on any machine).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GiB = 1 << 30
CASES = (("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM))


def hold(nbytes: int) -> None:
    from omnitrace.gpu import alloc
    memory = alloc.allocate(0, nbytes)

    def graceful(signum, frame):
        memory.free()
        sys.exit(0)

    signal.signal(signal.SIGTERM, graceful)  # SIGKILL cannot be caught: that case has no cleanup
    print(f"READY {alloc.kind()}", flush=True)
    while True:
        signal.pause()


def workload(notes_path: Path, nbytes: int) -> None:
    notes = {}
    for case, sig in CASES:
        child = subprocess.Popen([sys.executable, __file__, "hold", str(nbytes)],
                                 stdout=subprocess.PIPE, text=True)
        ready = child.stdout.readline().split()
        if not ready or ready[0] != "READY":
            child.kill()
            sys.exit(f"gpu-check: the {case} holder did not allocate (exit {child.wait()})")
        time.sleep(1.0)  # the held memory shows on the timeline before the fault
        t_signal = time.monotonic_ns()
        os.kill(child.pid, sig)
        status = child.wait()
        notes[case] = {"pid": child.pid, "signal": int(sig), "t_signal": t_signal,
                       "t_reaped": time.monotonic_ns(), "status": status, "nbytes": nbytes,
                       "memory": ready[1]}
        print(f"gpu-check: {case}: pid {child.pid} exit status {status}", flush=True)
        time.sleep(2.0)  # the release lands before the next case starts
    notes_path.write_text(json.dumps(notes, indent=1))


def first(events, predicate):
    return next((e for e in events if predicate(e)), None)


def measure(timeline, case: dict) -> dict:
    pid, sig = case["pid"], case["signal"]
    events = timeline.events
    generate = first(events, lambda e: e.kind == "signal_generate" and e.target_pid == pid
                     and e.signal == sig)
    t_kill = generate.t if generate else case["t_signal"]
    exit_event = first(events, lambda e: e.kind == "exit" and e.pid == pid and e.group_dead)
    reap = first(events, lambda e: e.kind == "reap" and e.pid == pid)
    holding = [e for e in events if e.kind == "gpu_process" and e.pid == pid]
    held = max((e.used for e in holding), default=0)
    gone = first(holding, lambda e: e.used == 0 and e.t >= t_kill)
    device = holding[0].device if holding else 0
    memory = [e for e in events if e.kind == "gpu_memory" and e.device == device]
    before = [e for e in memory if e.t < t_kill]
    back = None
    if before and held:
        level = before[-1].used
        back = first(memory, lambda e: e.t >= t_kill and e.used <= level - 0.9 * held)

    def since_kill(event):
        return round((event.t - t_kill) / 1e6, 2) if event else None

    return {"pid": pid, "held_gib": round(held / GiB, 2), "kill_source":
            "kernel" if generate else "workload clock",
            "kill_to_exit_ms": since_kill(exit_event), "kill_to_reap_ms": since_kill(reap),
            "kill_to_memory_back_ms": since_kill(back),
            "kill_to_process_gone_ms": since_kill(gone),
            "exit_to_memory_back_ms": round((back.t - exit_event.t) / 1e6, 2)
            if back and exit_event else None}


def report(timeline_path: Path, notes_path: Path) -> int:
    from omnitrace.timeline import read_timeline
    timeline = read_timeline(timeline_path)
    notes = json.loads(notes_path.read_text())
    gpu = (timeline.header.get("sources") or {}).get("gpu", {})
    print(f"timeline {timeline_path}: {timeline_path.stat().st_size} bytes, "
          f"{len(timeline.events)} events over {timeline.seconds(timeline.t_end):.1f} s")
    kinds: dict[str, int] = {}
    for event in timeline.events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    print("events by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"gpu source: {json.dumps(gpu)}")
    counters = (timeline.footer or {}).get("counters", {}).get("gpu")
    if counters:
        print(f"gpu counters: {json.dumps(counters)}")
    print(f"sources: {', '.join(timeline.header.get('sources') or {})}")
    failed = False
    for case in notes:
        figures = measure(timeline, notes[case])
        print(f"{case}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        failed |= figures["kill_to_memory_back_ms"] is None
    if failed:
        print("gpu-check: FAILED: a release was not seen on the timeline", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    hold_p = sub.add_parser("hold")
    hold_p.add_argument("nbytes", type=int)
    work = sub.add_parser("workload")
    work.add_argument("notes", type=Path)
    work.add_argument("--gib", type=float, default=8.0)
    rep = sub.add_parser("report")
    rep.add_argument("timeline", type=Path)
    rep.add_argument("notes", type=Path)
    args = parser.parse_args()
    if args.part == "hold":
        hold(args.nbytes)
    elif args.part == "workload":
        workload(args.notes, int(args.gib * GiB))
    else:
        return report(args.timeline, args.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
