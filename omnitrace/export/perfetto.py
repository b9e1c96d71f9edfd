"""A timeline as Chrome trace-event JSON, the format ui.perfetto.dev (and chrome://tracing) opens.

Layout in the UI, top to bottom:
  "scenarios"   async slices for the scenario, fault and OOM marks, plus a global instant at each
                fault so its line crosses every track
  "HTTP"        async slices, one per request (they overlap, which plain slices may not)
  "GPU"         a counter track per device (bytes in use)
  one process per traced pid, ordered by start: its lifetime as a slice named by its title, a
                per-process GPU memory counter, and instants for signals, its exit and its reap

Times are microseconds since the recording's t0 (the format's unit); process ids are the real ones,
so the UI's pid column matches the timeline. Built on omnitrace.model, like verify.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnitrace.events import signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.timeline import Timeline

# Pseudo-processes for the tracks that belong to no traced process; above any Linux pid_max.
SCENARIO_PID, HTTP_PID, GPU_PID = 1 << 30, (1 << 30) + 1, (1 << 30) + 2


def export_perfetto(timeline: Timeline, out: str | Path) -> dict[str, Any]:
    """Write the trace JSON to `out` and return it."""
    trace = perfetto_trace(timeline)
    Path(out).write_text(json.dumps(trace, separators=(",", ":")), encoding="utf-8")
    return trace


def perfetto_trace(timeline: Timeline) -> dict[str, Any]:
    model = build_model(timeline)
    builder = _TraceBuilder(model)
    builder.pseudo_process(SCENARIO_PID, "scenarios", 0)
    builder.pseudo_process(HTTP_PID, "HTTP", 1)
    builder.pseudo_process(GPU_PID, "GPU", 2)
    builder.marks()
    builder.requests()
    builder.gpu()
    for order, proc in enumerate(sorted(model.processes, key=_start_key), start=3):
        builder.process(proc, order)
    header = timeline.header
    return {
        "traceEvents": builder.events,
        "displayTimeUnit": "ms",
        "metadata": {"omnitrace.command": " ".join(header.get("command", [])),
                     "omnitrace.host": header.get("host", ""),
                     "omnitrace.t0_ns": timeline.t0,
                     "omnitrace.wall_offset_ns": header.get("wall_offset_ns", 0),
                     "omnitrace.truncated": timeline.truncated},
    }


def _start_key(proc: Process) -> tuple[int, int]:
    return (proc.start if proc.start is not None else -1, proc.pid)


class _TraceBuilder:
    def __init__(self, model: Model):
        self.model = model
        self.t0 = model.t0
        self.events: list[dict[str, Any]] = []
        self._async_id = 0

    def us(self, t: int) -> float:
        return (t - self.t0) / 1000.0

    def pseudo_process(self, pid: int, name: str, order: int) -> None:
        self.events += [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": name}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid,
             "args": {"sort_index": order}},
        ]

    def async_slice(self, pid: int, cat: str, name: str, start: int, end: int,
                    args: dict[str, Any]) -> None:
        self._async_id += 1
        common = {"cat": cat, "name": name, "pid": pid, "tid": pid, "id": hex(self._async_id)}
        self.events.append({**common, "ph": "b", "ts": self.us(start), "args": args})
        self.events.append({**common, "ph": "e", "ts": self.us(max(end, start))})

    def instant(self, pid: int, name: str, t: int, args: dict[str, Any], scope: str = "t") -> None:
        self.events.append({"ph": "i", "s": scope, "name": name, "pid": pid, "tid": pid,
                            "ts": self.us(t), "args": args})

    def counter(self, pid: int, name: str, t: int, values: dict[str, float]) -> None:
        self.events.append({"ph": "C", "name": name, "pid": pid, "tid": pid, "ts": self.us(t),
                            "args": values})

    # --- tracks ---------------------------------------------------------------------------------
    def marks(self) -> None:
        for mark in self.model.marks:
            name = mark.kind if mark.kind != "scenario" else f"scenario {mark.scenario}"
            args = {"scenario": mark.scenario, "server_pid": mark.server_pid, "pids": mark.pids}
            if mark.kind == "fault":
                name = f"fault {signal_name(mark.signal) if mark.signal else ''} -> {mark.target}"
                # a global instant draws the injection moment across every track
                self.instant(SCENARIO_PID, name, mark.t, args, scope="g")
            self.async_slice(SCENARIO_PID, f"mark.{mark.kind}", name, mark.t, mark.end, args)

    def requests(self) -> None:
        for req in self.model.requests:
            end = req.end if req.end is not None else self.model.t_end
            args = {"status": req.status, "error": req.error_type, "outcome": req.outcome(),
                    "source": req.source}
            self.async_slice(HTTP_PID, f"http.{req.kind}",
                             f"{req.method} {req.path} -> {req.outcome()}", req.t, end, args)

    def gpu(self) -> None:
        gpu = self.model.gpu
        for device, series in sorted(gpu.devices.items()):
            for t, used in zip(series.times, series.values):
                self.counter(GPU_PID, f"GPU {device} memory used", t, {"bytes": used})
        for pid, devices in gpu.by_pid.items():
            for device, series in sorted(devices.items()):
                for t, used in zip(series.times, series.values):
                    self.counter(pid, f"GPU {device} memory held", t, {"bytes": used})

    def process(self, proc: Process, order: int) -> None:
        pid = proc.pid
        title = proc.name or (proc.cmdline[0] if proc.cmdline else f"pid {pid}")
        if proc.ns_pid is not None and proc.ns_pid != pid:
            title += f" (ns pid {proc.ns_pid})"  # beside the UI's host pid: what the logs say
        start = proc.start if proc.start is not None else self.t0
        end = proc.exit_t if proc.exit_t is not None else self.model.t_end
        self.events += [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": title}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid,
             "args": {"sort_index": order}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": pid, "args": {"name": "lifetime"}},
        ]
        code, killed_by = proc.exit_status()
        args = {"pid": pid, "ppid": proc.ppid, "cmdline": " ".join(proc.cmdline),
                "started_before_recording": proc.start is None,
                "still_running_at_end": proc.exit_t is None,
                "exit_code": code, "signal": signal_name(killed_by) if killed_by else None,
                "ns_pid": proc.ns_pid, "container": proc.container}
        self.events.append({"ph": "X", "name": title, "cat": "process", "pid": pid, "tid": pid,
                            "ts": self.us(start), "dur": max(end - start, 0) / 1000.0,
                            "args": args})
        for receipt in proc.signals:
            self.instant(pid, f"{receipt.name} sent", receipt.t,
                         {"from_pid": receipt.sender_pid, "from": receipt.sender_comm,
                          "result": receipt.result})
            if receipt.delivered_t is not None:
                self.instant(pid, f"{receipt.name} delivered ({receipt.disposition})",
                             receipt.delivered_t, {})
        if proc.exit_t is not None:
            how = f"code {code}" if code is not None else (
                signal_name(killed_by) if killed_by else "unknown status")
            self.instant(pid, f"exit ({how})", proc.exit_t, {"exit_code": code})
        if proc.reap_t is not None:
            self.instant(pid, f"reaped by {proc.reaper_label()}", proc.reap_t,
                         {"reaper": proc.reaped_by, "exit_code": proc.reap_code,
                          "signal": signal_name(proc.reap_signal) if proc.reap_signal else None})
