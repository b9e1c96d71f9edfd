"""`omnitrace show FILE [--json]`: the per-process view of a recording.

The --json form is a stable contract (docs/timeline-format.md, "omnitrace show --json"); the
table is for people and may change.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from omnitrace.events import signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.timeline import read_timeline


def process_view(model: Model, proc: Process) -> dict[str, Any]:
    t0 = model.t0

    def secs(t: int | None) -> float | None:
        return None if t is None else round((t - t0) / 1e9, 6)

    code, sig = proc.exit_status() if proc.exit_t is not None else (None, None)
    reparented = [c.ppid for c in proc.parents[1:]]
    return {
        "pid": proc.pid,
        "ppid": proc.ppid,
        "name": proc.name,
        "cmdline": proc.cmdline,
        "start": secs(proc.start),
        "exit": secs(proc.exit_t),
        "exit_code": code,
        "exit_signal": signal_name(sig) if sig else None,
        "reaped_by": proc.reaped_by,
        "reparented_to": reparented[-1] if reparented else None,
        "signals_received": [
            {"signal": r.name, "sender_pid": r.sender_pid, "time": secs(r.t),
             "disposition": r.disposition}
            for r in proc.signals
        ],
    }


def processes_view(model: Model) -> list[dict[str, Any]]:
    ordered = sorted(model.processes, key=lambda p: (p.start is not None, p.start or 0, p.pid))
    return [process_view(model, p) for p in ordered]


def _fmt_time(value: float | None) -> str:
    return "-" if value is None else f"+{value:.3f}s"


def _status(view: dict[str, Any]) -> str:
    if view["exit"] is None:
        return "alive"
    if view["exit_signal"]:
        return view["exit_signal"]
    return "?" if view["exit_code"] is None else f"exit {view['exit_code']}"


def render_table(views: list[dict[str, Any]]) -> str:
    lines = [f"{'PID':>7} {'PPID':>7} {'START':>10} {'EXIT':>10} {'STATUS':>8} {'REAPED':>7}  NAME"]
    for v in views:
        reaped = "-" if v["reaped_by"] is None else str(v["reaped_by"])
        name = v["name"] or " ".join(v["cmdline"])[:60]
        if v["reparented_to"] is not None:
            name += f"  (re-parented to {v['reparented_to']})"
        lines.append(f"{v['pid']:>7} {v['ppid'] if v['ppid'] is not None else '-':>7} "
                     f"{_fmt_time(v['start']):>10} {_fmt_time(v['exit']):>10} {_status(v):>8} "
                     f"{reaped:>7}  {name}")
        for s in v["signals_received"]:
            how = s["disposition"] or "not delivered"
            lines.append(f"{'':>26}{_fmt_time(s['time']):>10}  <- {s['signal']} from pid "
                         f"{s['sender_pid']} ({how})")
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The stable machine-readable form.")
@click.option("--lenient", is_flag=True, help="Skip corrupt lines with a warning instead of failing.")
def show(file, as_json, lenient):
    """Show each process of a recording: parent, lifetime, exit status, reaper, signals."""
    timeline = read_timeline(file, lenient=lenient)
    for warning in timeline.warnings:
        click.echo(f"omnitrace: warning: {warning}", err=True)
    views = processes_view(build_model(timeline))
    if as_json:
        json.dump(views, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        click.echo(render_table(views))
