"""Write a synthetic timeline of about N events for the verify benchmark.

The mix is what a long reliability run records: thread forks and exits of a busy server, periodic
procfs snapshots, fast GPU samples, health probes and load requests, and repeated scenarios (a
server started, SIGKILLed, its workers following) with marks.

    .venv/bin/python bench/gen_timeline.py -n 1000000 -o /tmp/big.jsonl
"""
from __future__ import annotations

import argparse
import json

from omnitrace.events import (Exit, ExitGroup, Fork, GpuMemory, GpuProcess, ProcSnapshot, Reap,
                              SignalDeliver, SignalGenerate, Span)
from omnitrace.model.synthetic import T0

GIB = 1 << 30
SCENARIO_S = 75          # one server life: started, SIGKILLed at +30 s, observed for 45 s
STAGE = "VLLM::StageEngineCoreProc_noid_replica0_DP0"


def scenario_events(n: int, base_pid: int, t: int, per_scenario: int):
    """One server lifetime, SIGKILLed at +30 s, with filler up to per_scenario events."""
    serve, workers = base_pid, [base_pid + 1, base_pid + 2, base_pid + 3]
    sec = 1_000_000_000
    yield Fork(t, serve, serve, 10, "python3")
    yield ProcSnapshot(t + 1000, serve, 10, "python3", ["python3", "-m", "vllm_omni.entrypoints",
                       "serve", "--omni"], "sleeping", t, ports=[8000], reason="new")
    for w in workers:
        yield Fork(t + sec, w, w, serve, STAGE)
        yield GpuProcess(t + 2 * sec, w % 2, w, 20 * GIB)
    fault = t + 30 * sec
    row = "no-load/sigkill/serve"
    yield Span(t + 29 * sec, t + SCENARIO_S * sec - 1, "omnitrace.scenario",
               {"omnitrace.mark": "scenario", "omnitrace.scenario": row, "omnitrace.server.pid": serve})
    yield Span(fault, fault, "omnitrace.fault", {"omnitrace.mark": "fault", "omnitrace.scenario": row,
               "omnitrace.fault.signal": "SIGKILL", "omnitrace.fault.target": "serve",
               "omnitrace.fault.pids": [serve]})
    yield SignalGenerate(fault, 20, 20, "pytest", serve, serve, "python3", 9)
    yield SignalDeliver(fault + 100_000, serve, serve, 9)
    yield Exit(fault + 1_000_000, serve, serve, "python3")
    yield Reap(fault + 5_000_000, 10, serve, None, None, 9)
    for k, w in enumerate(workers):
        yield ExitGroup(fault + 200_000_000 + k, w, w, 143)
        yield Exit(fault + 200_000_001 + k, w, w, STAGE)
        yield Reap(fault + 250_000_000 + k, 1, w, None, 143, None)
        yield GpuProcess(fault + 300_000_000 + k, w % 2, w, 0)
    emitted = 16 + 3 * 6
    # Filler, spread over the scenario: the bulk of a real recording.
    filler = max(per_scenario - emitted, 0)
    settled = t + 2 * sec          # filler starts once the workers exist
    step = (SCENARIO_S - 2) * sec // max(filler, 1)
    tid = base_pid + 100
    for i in range(filler):
        ft = settled + i * step
        pick = i % 10
        before_fault = ft < fault
        if pick < 3 and before_fault:
            tid += 1
            yield Fork(ft, workers[i % 3], tid, workers[i % 3], STAGE, thread=True)
        elif pick < 5 and before_fault:
            yield Exit(ft, workers[i % 3], tid, STAGE, group_dead=False)
        elif pick < 8:
            used = 40 * GIB if before_fault else GIB // 2
            yield GpuMemory(ft, i % 2, used, 80 * GIB)
        elif pick == 8:
            status = 200 if before_fault else None
            attrs = {"http.request.method": "GET", "url.path": "/health", "omnitrace.request.kind": "health"}
            if status:
                attrs["http.response.status_code"] = status
            else:
                attrs["error.type"] = "refused"
            yield Span(ft, ft + 2_000_000, "GET /health", attrs, "probe")
        else:
            pid = workers[i % 3] if before_fault else serve
            yield ProcSnapshot(ft, pid, serve, STAGE, [STAGE], "sleeping", reason="periodic") \
                if before_fault else GpuMemory(ft, 1, GIB // 2, 80 * GIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=1_000_000)
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--per-scenario", type=int, default=50_000)
    args = parser.parse_args()
    scenarios = max(1, args.events // args.per_scenario)
    header = {"kind": "header", "format": "omnitrace-timeline", "version": 1, "t0": T0,
              "clock": "CLOCK_MONOTONIC", "unit": "ns",
              "sources": {s: {"backend": "synthetic"} for s in ("kernel", "procfs", "gpu", "http")}}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    count = 0
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(dumps(header) + "\n")
        for n in range(scenarios):
            t = T0 + n * SCENARIO_S * 1_000_000_000
            for event in scenario_events(n, 1000 + n * 10_000, t, args.per_scenario):
                out.write(dumps(event.to_dict()) + "\n")
                count += 1
        end = T0 + scenarios * SCENARIO_S * 1_000_000_000
        out.write(dumps({"kind": "footer", "events": count, "t": end}) + "\n")
    print(f"wrote {count} events, {scenarios} scenarios, to {args.out}")


if __name__ == "__main__":
    main()
