"""`omnitrace show FILE [--json]`: the per-process view of a recording.

The --json form is a stable contract (docs/timeline-format.md, "omnitrace show --json"); the
table is for people and may change.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from omnitrace.events import KERNEL_REAPER, signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.model.roles import RolePatterns
from omnitrace.timeline import read_timeline
from omnitrace.view import (describe_signal, display_name, display_roles, fault_name,
                            grouped_signals, marked_windows, recorded_tree, role_patterns,
                            signal_group_dict)


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


def _by_start(model: Model) -> list[Process]:
    """Processes that predate the recording first, then by start time."""
    return sorted(model.processes, key=lambda p: (p.start is not None, p.start or 0, p.pid))


def processes_view(model: Model) -> list[dict[str, Any]]:
    return [process_view(model, p) for p in _by_start(model)]


def annotated_views(model: Model, patterns: RolePatterns) -> list[dict[str, Any]]:
    """processes_view plus the fields added to the contract since: role, in_recorded_tree,
    signals (signals_received with per-thread deliveries folded into the signal that caused
    them), ns_pid and container (the pid and the container the server's own logs know).
    Existing fields never change."""
    roles = display_roles(model, patterns)
    tree = recorded_tree(model)
    return [{**process_view(model, p),
             "role": roles.get(id(p)),
             "in_recorded_tree": tree is None or id(p) in tree,
             "reparented_at": _reparented_at(model, p),
             "signals": [signal_group_dict(g, model.t0) for g in grouped_signals(p)],
             "ns_pid": p.ns_pid,
             "container": p.container}
            for p in _by_start(model)]


def _reparented_at(model: Model, proc: Process) -> float | None:
    """When it was handed to `reparented_to` (the last re-parenting), in seconds."""
    return round((proc.parents[-1].t - model.t0) / 1e9, 6) if len(proc.parents) > 1 else None


def scenario_windows(model: Model) -> list[dict[str, Any]]:
    """The scenario marks' windows, in seconds, with the faults inside each."""
    secs = lambda t: round((t - model.t0) / 1e9, 6)  # noqa: E731
    return [{"id": w.scenario, "start": secs(w.t), "end": secs(w.end), "faults": [
                {"fault": fault_name(f), "pids": f.pids, "time": secs(f.t),
                 "target": f"request {f.variant}" if f.kind == "input" else f.target}
                for f in faults]}
            for w, faults in marked_windows(model)]


def _fmt_time(value: float | None) -> str:
    return "-" if value is None else f"+{value:.3f}s"


def _status(view: dict[str, Any]) -> str:
    if view["exit"] is None:
        return "alive"
    if view["exit_signal"]:
        return view["exit_signal"]
    return "?" if view["exit_code"] is None else f"exit {view['exit_code']}"


def render_table(views: list[dict[str, Any]], show_all: bool = False,
                 windows: list[dict[str, Any]] = ()) -> str:
    """Each scenario window (scenario_windows) first; then one line per process of the recorded
    tree (every process with show_all), its role beside its name, then one line per signal it
    received (annotated_views' grouped signals; a run of SIGCHLDs from its children is one line:
    the children's own rows say how they ended), tagged when it came after a window's end."""
    shown = [v for v in views if show_all or v["in_recorded_tree"]]
    lines = [_window_line(w) for w in windows]
    lines.append(f"{'PID':>7} {'PPID':>7} {'START':>10} {'EXIT':>10} {'STATUS':>8} {'REAPED':>7}  "
                 f"{'ROLE':<7} NAME")
    for v in shown:
        lines.append(_process_line(v, windows))
        lines += [f"{'':>26}{_fmt_time(t):>10}  <- {text}{_after_window(t, windows)}"
                  for t, text in _signal_lines(v)]
    hidden = [v["pid"] for v in views if not (show_all or v["in_recorded_tree"])]
    if hidden:
        pids = " ".join(str(pid) for pid in hidden[:8]) + (" …" if len(hidden) > 8 else "")
        lines.append(f"({len(hidden)} process{'es' if len(hidden) > 1 else ''} outside the "
                     f"recorded tree not shown: pid {pids}; --all shows them)")
    return "\n".join(lines)


def _window_line(w: dict[str, Any]) -> str:
    """'scenario no-load/sigkill/serve: window +2.143s to +143.780s; SIGKILL -> serve 9776 at
    +103.692s'."""
    faults = "".join(f"; {f['fault']} -> {f['target'] or 'pids'} "
                     f"{' '.join(str(p) for p in f['pids'])} at {_fmt_time(f['time'])}"
                     for f in w["faults"])
    return f"scenario {w['id']}: window {_fmt_time(w['start'])} to {_fmt_time(w['end'])}{faults}"


def _after_window(t: float | None, windows: list[dict[str, Any]]) -> str:
    """'  [after the window]' when t is past the end of the last window begun before it."""
    begun = [w for w in windows if t is not None and w["start"] <= t]
    return "  [after the window]" if begun and t > begun[-1]["end"] else ""


def _process_line(v: dict[str, Any], windows: list[dict[str, Any]] = ()) -> str:
    reaped = "-" if v["reaped_by"] is None else (
        "kernel" if v["reaped_by"] == KERNEL_REAPER else str(v["reaped_by"]))
    name = display_name(v["name"], v["cmdline"])
    if v["reparented_to"] is not None:
        name += (f"  (orphan: re-parented to {v['reparented_to']} at "
                 f"{_fmt_time(v['reparented_at'])}{_after_window(v['reparented_at'], windows)})")
    name += _placement(v)
    ppid = v["ppid"] if v["ppid"] is not None else "-"
    return (f"{v['pid']:>7} {ppid:>7} {_fmt_time(v['start']):>10} {_fmt_time(v['exit']):>10} "
            f"{_status(v):>8} {reaped:>7}  {v['role'] or '-':<7} {name}")


def _placement(v: dict[str, Any]) -> str:
    """'  [ns pid 7, container web]': how the container's own logs name it."""
    parts = []
    if v.get("ns_pid") is not None and v["ns_pid"] != v["pid"]:
        parts.append(f"ns pid {v['ns_pid']}")
    if v.get("container"):
        parts.append(f"container {v['container']}")
    return f"  [{', '.join(parts)}]" if parts else ""


def _signal_lines(v: dict[str, Any]) -> list[tuple[float, str]]:
    """(time, text) per signal; every SIGCHLD of the process folded into the first one's line."""
    children = [s for s in v["signals"] if s["signal"] == "SIGCHLD"]
    lines = [(s["time"], describe_signal(**s)) for s in v["signals"] if s["signal"] != "SIGCHLD"]
    if len(children) == 1:
        lines.append((children[0]["time"], describe_signal(**children[0])))
    elif children:
        lines.append((children[0]["time"], _sigchld_text(children)))
    return sorted(lines, key=lambda line: line[0])


def _sigchld_text(children: list[dict[str, Any]]) -> str:
    senders = [str(s["sender_pid"]) for s in children]
    listed = " ".join(senders[:6]) + (" …" if len(senders) > 6 else "")
    outcomes: dict[str, int] = {}
    for s in children:
        how = s["disposition"] or "not delivered"
        outcomes[how] = outcomes.get(how, 0) + 1
    counts = ", ".join(f"{n} {how}" for how, n in outcomes.items())
    return f"SIGCHLD ×{len(children)} from pids {listed} ({counts})"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The stable machine-readable form.")
@click.option("--lenient", is_flag=True, help="Skip corrupt lines with a warning instead of failing.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list processes outside the recorded tree (the recorder, outside senders).")
@click.option("--matrix", "matrix_file", metavar="FILE",
              help="The matrix whose role patterns name server, engine, worker and helper "
                   "(default: the one the recording carries, else the built-in one).")
def show(file, as_json, lenient, show_all, matrix_file):
    """Show each process of a recording: role, parent, lifetime, exit status, reaper, signals."""
    timeline = read_timeline(file, lenient=lenient)
    for warning in timeline.warnings:
        click.echo(f"omnitrace: warning: {warning}", err=True)
    patterns = role_patterns(timeline.header, matrix_file, file)
    model = build_model(timeline)
    views = annotated_views(model, patterns)
    if as_json:
        json.dump(views, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        click.echo(render_table(views, show_all, scenario_windows(model)))
