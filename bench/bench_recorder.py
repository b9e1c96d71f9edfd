"""Recorder benchmark: sustained event rates with zero loss, the recorder's CPU share, and the
slowdown of a fork/exit-heavy workload (untraced, omnitrace, bpftrace as the reference).

    sudo .venv/bin/python bench/bench_recorder.py [--seconds 10] [--rates 1000,10000,20000,40000]

Prints a Markdown table; docs/performance.md keeps the figures of a run.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def forkloop(prefix: list[str], count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fork loop, run under `prefix`."""
    out = subprocess.run(prefix + STORM + ["forkloop", str(count)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def bpftrace_prefix(tmp: str, count: int) -> list[str]:
    """bpftrace runs the workload itself (-c) and follows its tree like omnitrace does."""
    script = Path(tmp) / "trace.bt"
    script.write_text(BPFTRACE_SCRIPT.replace("/@traced[pid]/", "/pid == cpid || @traced[pid]/"))
    return ["bpftrace", "-o", str(Path(tmp) / "out.txt"), "-c", " ".join(STORM + ["forkloop", str(count)]),
            str(script)]


def slowdowns(count: int, pairs: int) -> dict[str, list[tuple[float, float]]]:
    """Alternate untraced / omnitrace / bpftrace runs, `pairs` rounds: this VM's speed drifts by
    more than the effect, so each traced run is compared with the untraced run next to it."""
    runs: dict[str, list[tuple[float, float]]] = {"untraced": [], "omnitrace": [], "bpftrace": []}
    with tempfile.TemporaryDirectory() as tmp:
        record = RECORD + ["-o", str(Path(tmp) / "loop.jsonl"), "--"]
        for _ in range(pairs):
            runs["untraced"].append(forkloop([], count))
            runs["omnitrace"].append(forkloop(record, count))
            if _has("bpftrace"):
                out = subprocess.run(bpftrace_prefix(tmp, count), capture_output=True, text=True,
                                     check=True).stdout.split()
                runs["bpftrace"].append((float(out[-2]), float(out[-1])))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="1000,10000,20000,40000")
    parser.add_argument("--forks", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--skip-storms", action="store_true")
    args = parser.parse_args()
    rows = []
    for mode in () if args.skip_storms else ("signals", "forks"):
        for rate in [int(r) for r in args.rates.split(",")]:
            rows.append(storm_under_recorder(mode, rate, args.seconds))
            r = rows[-1]
            print(f"{mode:8} target {rate:>6}/s achieved {r['achieved']:>8.0f}/s lost {r['lost']:>6} "
                  f"recorder CPU {r['cpu_share'] * 100:5.1f}%", flush=True)
    runs = slowdowns(args.forks, args.pairs)
    print()
    print("| storm | target events/s | recorded events/s | lost | recorder CPU (1 core = 100 %) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['target']:,} | {r['achieved']:,.0f} | {r['lost']:,} | "
              f"{r['cpu_share'] * 100:.1f} % |")
    print()
    print(f"| fork/exit/wait x {args.forks}, {args.pairs} alternating rounds | wall s (median) | "
          "slowdown, wall (median of rounds) | workload CPU s (median) | slowdown, CPU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = runs["untraced"]
    for name, label in (("untraced", "untraced"), ("omnitrace", "omnitrace record"),
                        ("bpftrace", "bpftrace (same tracepoints, printf)")):
        if not runs[name]:
            continue
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        if name == "untraced":
            print(f"| {label} | {wall:.3f} | - | {cpu:.3f} | - |")
            continue
        ratio_w = statistics.median(t[0] / b[0] - 1 for t, b in zip(runs[name], base))
        ratio_c = statistics.median(t[1] / b[1] - 1 for t, b in zip(runs[name], base))
        print(f"| {label} | {wall:.3f} | {ratio_w * 100:+.1f} % | {cpu:.3f} | {ratio_c * 100:+.1f} % |")
    return 0


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(":"))


if __name__ == "__main__":
    sys.exit(main())
