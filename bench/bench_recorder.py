"""Recorder benchmark: sustained event rates with zero loss, the recorder's CPU share, and the
slowdown of a fork/exit-heavy workload (untraced, omnitrace, bpftrace as the reference).

    sudo .venv/bin/python bench/bench_recorder.py [--seconds 10] [--rates 1000,10000,20000,40000]

Prints a Markdown table; docs/performance.md keeps the figures of a run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
STORM = [sys.executable, str(REPO / "bench" / "storm.py")]
RECORD = [sys.executable, "-m", "omnitrace.cli", "record", "--no-health", "--no-otlp", "--gpu", "off",
          "--linger", "0"]
BPFTRACE_SCRIPT = r"""
tracepoint:sched:sched_process_fork /@traced[pid]/ { @traced[args->child_pid] = 1; printf("fork %d %d\n", pid, args->child_pid); }
tracepoint:sched:sched_process_exit /@traced[pid]/ { printf("exit %d %d\n", pid, tid); }
tracepoint:syscalls:sys_enter_exit_group /@traced[pid]/ { printf("exit_group %d %d\n", pid, args->error_code); }
tracepoint:syscalls:sys_exit_wait4 /@traced[pid]/ { printf("reap %d %d\n", pid, args->ret); }
tracepoint:signal:signal_generate /@traced[pid]/ { printf("sig %d %d %d\n", pid, args->pid, args->sig); }
tracepoint:signal:signal_deliver /@traced[pid]/ { printf("dlv %d %d\n", pid, args->sig); }
"""


def kernel_counts(path: Path) -> tuple[int, int]:
    from omnitrace.timeline import read_timeline
    timeline = read_timeline(path)
    counters = timeline.footer["counters"]["kernel"]
    return counters["events"], counters["lost"]


def storm_under_recorder(mode: str, rate: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "storm.jsonl"
        proc = subprocess.Popen(RECORD + ["-o", str(out), "--"] + STORM + [mode, str(rate), str(seconds)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        recorder = psutil.Process(proc.pid)
        time.sleep(1.0)  # past BPF compile and start-up: measure the steady state
        cpu0, t0 = sum(recorder.cpu_times()[:2]), time.monotonic()
        cpu1, t1 = cpu0, t0
        while proc.poll() is None:
            try:
                cpu1, t1 = sum(recorder.cpu_times()[:2]), time.monotonic()
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        ops = int(proc.stdout.read().split()[0])
        events, lost = kernel_counts(out)
    return {"mode": mode, "target": rate, "achieved": events / seconds, "events": events,
            "lost": lost, "ops": ops, "cpu_share": (cpu1 - cpu0) / max(t1 - t0, 1e-9)}


def forkloop_seconds(prefix: list[str], count: int) -> float:
    out = subprocess.run(prefix + STORM + ["forkloop", str(count)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[-1])


def forkloop_under_bpftrace(count: int) -> float:
    """bpftrace runs the workload itself (-c) and follows its tree like omnitrace does."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "trace.bt"
        script.write_text(BPFTRACE_SCRIPT.replace("/@traced[pid]/", "/pid == cpid || @traced[pid]/"))
        command = " ".join(STORM + ["forkloop", str(count)])
        out = subprocess.run(["bpftrace", "-o", str(Path(tmp) / "out.txt"), "-c", command, str(script)],
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[-1])


def forkloop_recorded(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return forkloop_seconds(RECORD + ["-o", str(Path(tmp) / "loop.jsonl"), "--"], count)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="1000,10000,20000,40000")
    parser.add_argument("--forks", type=int, default=3000)
    args = parser.parse_args()
    rows = []
    for mode in ("signals", "forks"):
        for rate in [int(r) for r in args.rates.split(",")]:
            rows.append(storm_under_recorder(mode, rate, args.seconds))
            r = rows[-1]
            print(f"{mode:8} target {rate:>6}/s achieved {r['achieved']:>8.0f}/s lost {r['lost']:>6} "
                  f"recorder CPU {r['cpu_share'] * 100:5.1f}%", flush=True)
    bare = min(forkloop_seconds([], args.forks) for _ in range(3))
    traced = min(forkloop_recorded(args.forks) for _ in range(3))
    reference = forkloop_under_bpftrace(args.forks) if _has("bpftrace") else None
    print()
    print("| storm | target events/s | recorded events/s | lost | recorder CPU (1 core = 100 %) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['target']:,} | {r['achieved']:,.0f} | {r['lost']:,} | "
              f"{r['cpu_share'] * 100:.1f} % |")
    print()
    print(f"| fork/exit/wait x {args.forks} | seconds | slowdown |")
    print("| --- | ---: | ---: |")
    print(f"| untraced | {bare:.3f} | - |")
    print(f"| omnitrace record | {traced:.3f} | {(traced / bare - 1) * 100:+.1f} % |")
    if reference is not None:
        print(f"| bpftrace (same tracepoints, printf) | {reference:.3f} | {(reference / bare - 1) * 100:+.1f} % |")
    return 0


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(":"))


if __name__ == "__main__":
    sys.exit(main())
