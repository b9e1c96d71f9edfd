"""Idle cost of a testbed's whole process tree: `python -m omnitrace.testbed.idle [SECONDS] [ARGS]`.
Starts a testbed (extra ARGS go to `testbed serve`), lets it settle, then samples CPU time and
memory of every process in the tree; prints one line per process and a total."""
from __future__ import annotations

import sys
import time

import psutil

from omnitrace.testbed.harness import running_testbed


def measure(seconds: float, args: list[str]) -> None:
    with running_testbed(args) as tb:
        print(f"ready after {tb.ready_s:.2f} s")
        time.sleep(2)   # past start-up work
        procs = [psutil.Process(pid) for pid in tb.tree_pids()]
        before = {p.pid: sum(p.cpu_times()[:4]) for p in procs}
        start = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        total_cpu = total_rss = total_uss = 0.0
        for p in procs:
            cpu = (sum(p.cpu_times()[:4]) - before[p.pid]) / elapsed * 100
            mem = p.memory_full_info()
            total_cpu, total_rss, total_uss = total_cpu + cpu, total_rss + mem.rss, total_uss + mem.uss
            print(f"{p.pid:>8} {p.name()[:48]:<48} cpu {cpu:5.2f}%  rss {mem.rss / 2**20:6.1f} MiB"
                  f"  uss {mem.uss / 2**20:6.1f} MiB")
        print(f"{'total':>8} {len(procs)} processes over {elapsed:.0f} s{'':<22} cpu {total_cpu:5.2f}%"
              f"  rss {total_rss / 2**20:6.1f} MiB  uss {total_uss / 2**20:6.1f} MiB")


if __name__ == "__main__":
    measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0, sys.argv[2:])
