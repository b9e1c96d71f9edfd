"""Time and peak memory of reading and verifying a timeline (the 1,000,000-event target: < 5 s,
< 1 GB). Reports the read and the check separately, since they have different owners.

    .venv/bin/python bench/gen_timeline.py -n 1000000 -o /tmp/big.jsonl
    .venv/bin/python bench/bench_verify.py /tmp/big.jsonl
"""
from __future__ import annotations

import resource
import sys
import time

from omnitrace.timeline import read_timeline, settle_for_analysis
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.matrix import load_matrix


def main(path: str) -> int:
    start = time.perf_counter()
    timeline = read_timeline(path)
    settle_for_analysis()  # as `omnitrace verify` does
    read_s = time.perf_counter() - start
    report = verify_timeline(timeline, load_matrix(None))
    total_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = report.counts()
    print(f"events {len(timeline.events)}  scenarios {len(report.scenarios)}  verdicts {counts}")
    print(f"read {read_s:.2f} s  check {total_s - read_s:.2f} s  total {total_s:.2f} s  "
          f"peak RSS {peak_mib:.0f} MiB")
    return 0 if total_s < 5 and peak_mib < 1024 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
