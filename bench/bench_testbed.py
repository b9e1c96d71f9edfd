"""Two speeds the testbed and the simulated GPU are built for, measured rather than enforced:

- time from `testbed serve` to its READY line (the testbed issue asks for < 5 s), over N starts;
- cost of one poll of the simulated device (memory + process list), which the recorder's GPU
  source makes at up to 500 Hz during a burst, with 4 live holders on the device.

    .venv/bin/python bench/bench_testbed.py [--starts 5] [--polls 2000]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omnitrace.gpu import sim
from omnitrace.testbed.harness import running_testbed

GiB = 1 << 30


def testbed_ready(starts: int) -> list[float]:
    seconds = []
    for _ in range(starts):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as device:
            with running_testbed(sim_dir=device) as tb:
                seconds.append(tb.ready_s)
    return seconds


def sim_poll_cost(polls: int) -> float:
    """Seconds per (memory + processes) poll of device 0 with 4 holders alive."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as path:
        device = sim.SimGpu(sim.ensure_device(Path(path), device_count=2, capacity_bytes=8 * GiB))
        code = (f"from omnitrace.gpu.sim import SimGpu; SimGpu({path!r}).allocate(0, {GiB}); "
                "print('READY', flush=True); import time; time.sleep(600)")
        holders = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                   for _ in range(4)]
        try:
            for h in holders:
                assert h.stdout.readline().strip() == "READY"
            start = time.perf_counter()
            for _ in range(polls):
                device.memory(0)
                device.processes(0)
            return (time.perf_counter() - start) / polls
        finally:
            for h in holders:
                h.kill()
                h.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--polls", type=int, default=2000)
    args = parser.parse_args()
    ready = testbed_ready(args.starts)
    print(f"testbed READY after: median {statistics.median(ready):.2f} s, "
          f"max {max(ready):.2f} s over {len(ready)} starts (target < 5 s)")
    per_poll = sim_poll_cost(args.polls)
    print(f"simulated GPU poll (memory + processes, 4 holders): {per_poll * 1e6:.0f} us "
          f"-> at most {1 / per_poll:.0f} polls/s (the burst asks 500)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
