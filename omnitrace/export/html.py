"""`omnitrace report`: one self-contained HTML page (inline CSS and SVG, no script, no fetches) that
opens anywhere, from a CI artifact as well as from disk.

The page: a header naming the recording, the verdict table from verify's report, then per scenario
one picture on a shared time axis (0 = the fault, or the scenario's start) with three bands:
  processes  a lifeline per process of the server tree: solid while running, dashed while a zombie
             (exited, not yet reaped); markers for signals sent (triangle), delivered (dot), the
             exit (cross) and the reap (ring); hover shows details
  GPU        memory in use per device, as a step curve
  HTTP       each request as a bar from start to answer, coloured by outcome; a hung one runs off
             the right edge
A recording without scenario marks is drawn as one picture of the whole recording.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitrace.events import signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.model.http import Request
from omnitrace.model.marks import Mark
from omnitrace.timeline import Timeline

WIDTH, LABEL_W, RIGHT_PAD = 1100, 300, 20
ROW_H, GPU_H, AXIS_H = 18, 90, 26
MAX_PROCESS_ROWS = 40
SIGNAL_COLOURS = {9: "#c0392b", 15: "#e67e22", 2: "#8e44ad"}
VERDICT_CLASSES = {"pass": "pass", "fail": "fail", "inconclusive": "inc"}
GPU_COLOURS = ("#2471a3", "#17a589", "#b7950b", "#884ea0")


def export_html(timeline: Timeline, out: str | Path, report: dict[str, Any] | None = None) -> str:
    """Write the report page for `timeline` (and verify's `report` dict, when there is one)."""
    page = render_report(timeline, report)
    Path(out).write_text(page, encoding="utf-8")
    return page


@dataclass
class _Window:
    """One picture: a scenario's span of time, padded so the lead-up and the aftermath show."""
    title: str
    scenario: str | None
    start: int
    end: int
    zero: int            # the time shown as 0 s: the fault, or the start
    server_pid: int | None
    faults: list[Mark]


def render_report(timeline: Timeline, report: dict[str, Any] | None = None) -> str:
    model = build_model(timeline)
    windows = _windows(model)
    sections = [_scenario_section(model, w, _scenario_result(report, w.scenario)) for w in windows]
    header = timeline.header
    title = f"omnitrace report: {' '.join(header.get('command', [])) or timeline.path}"
    facts = [("recording", timeline.path), ("host", header.get("host", "")),
             ("duration", f"{(timeline.t_end - timeline.t0) / 1e9:.2f} s"),
             ("sources", ", ".join(sorted(header.get("sources") or {}))),
             ("events", str(len(timeline.events)))]
    warnings = list(timeline.warnings)
    lost = sum(count for _, _, _, count, _ in model.lost)
    if lost:
        warnings.append(f"{lost} events were lost during the recording; windows with losses cannot pass")
    return _PAGE.format(
        title=_e(title), css=_CSS,
        facts="".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts),
        warnings="".join(f'<p class="warn">{_e(w)}</p>' for w in warnings),
        verdicts=_verdict_table(report), sections="\n".join(sections),
        count=len(windows))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- verdict table --------------------------------------------------------------------------------
def _verdict_table(report: dict[str, Any] | None) -> str:
    if not report or not report.get("scenarios"):
        return '<p class="note">No verdicts: run <code>omnitrace verify</code> to check this recording.</p>'
    rows = []
    for scenario in report["scenarios"]:
        for rule in scenario.get("rules", []):
            verdict = str(rule.get("verdict", ""))
            measured = _figure(rule.get("measured"), rule.get("unit"))
            limit = _figure(rule.get("threshold"), rule.get("unit"))
            rows.append(
                f'<tr><td><a href="#{_anchor(scenario.get("id"))}">{_e(scenario.get("id", ""))}</a></td>'
                f'<td>{_e(rule.get("id", ""))}</td>'
                f'<td class="v {VERDICT_CLASSES.get(verdict, "inc")}">{_e(verdict)}</td>'
                f"<td>{_e(measured)}</td><td>{_e(limit)}</td>"
                f'<td class="why">{_e(rule.get("message") or rule.get("summary") or "")}</td></tr>')
    return ('<table class="verdicts"><thead><tr><th>scenario</th><th>rule</th><th>verdict</th>'
            '<th>measured</th><th>limit</th><th>why</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _figure(value: Any, unit: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:.3g}"
    return f"{value} {unit or ''}".strip()


def _scenario_result(report: dict[str, Any] | None, scenario: str | None) -> str | None:
    for entry in (report or {}).get("scenarios", []):
        if entry.get("id") == scenario or entry.get("row") == scenario:
            verdicts = [r.get("verdict") for r in entry.get("rules", [])]
            return entry.get("verdict") or next(
                (v for v in ("fail", "inconclusive", "pass") if v in verdicts), None)
    return None


def _anchor(scenario: Any) -> str:
    return "scenario-" + "".join(c if c.isalnum() else "-" for c in str(scenario))


# --- windows --------------------------------------------------------------------------------------
def _windows(model: Model) -> list[_Window]:
    faults = [m for m in model.marks if m.kind in ("fault", "oom")]
    windows = []
    for mark in (m for m in model.marks if m.kind == "scenario"):
        inside = [f for f in faults if mark.t <= f.t <= mark.end and f.scenario in (None, mark.scenario)]
        pad = max((mark.end - mark.t) // 10, 50_000_000)
        windows.append(_Window(str(mark.scenario), mark.scenario, mark.t - pad, mark.end + pad,
                               inside[0].t if inside else mark.t, mark.server_pid, inside))
    if not windows:
        windows.append(_Window("whole recording", None, model.t0, max(model.t_end, model.t0 + 1),
                               faults[0].t if faults else model.t0, None, faults))
    return windows


def _processes(model: Model, w: _Window) -> list[Process]:
    """The server tree (and fault targets) when the marks name it, else everything in the window."""
    pool: list[Process]
    root = model.process(w.server_pid, w.start) if w.server_pid else None
    if root is not None:
        pool = [root, *model.descendants(root)]
        wanted = {p for f in w.faults for p in f.pids}
        pool += [p for p in model.processes if p.pid in wanted and p not in pool]
    else:
        pool = list(model.processes)
    shown = [p for p in pool if (p.start is None or p.start <= w.end)
             and (p.exit_t is None or (p.reap_t or p.exit_t) >= w.start)]
    shown.sort(key=lambda p: (p.start or 0, p.pid))
    return shown[:MAX_PROCESS_ROWS]


# --- one scenario's picture -----------------------------------------------------------------------
class _Canvas:
    def __init__(self, w: _Window):
        self.w = w
        self.parts: list[str] = []
        self.span = max(w.end - w.start, 1)

    def x(self, t: int) -> float:
        t = min(max(t, self.w.start), self.w.end)
        return LABEL_W + (t - self.w.start) / self.span * (WIDTH - LABEL_W - RIGHT_PAD)

    def add(self, svg: str) -> None:
        self.parts.append(svg)


def _scenario_section(model: Model, w: _Window, verdict: str | None) -> str:
    canvas = _Canvas(w)
    procs = _processes(model, w)
    y = AXIS_H
    y = _band_title(canvas, y, f"processes ({len(procs)})")
    for proc in procs:
        _lifeline(canvas, model, proc, y)
        y += ROW_H
    y = _band_title(canvas, y + 6, "GPU memory")
    _gpu_band(canvas, model, y)
    y += GPU_H
    requests = [r for r in model.requests_between(w.start, w.end)]
    y = _band_title(canvas, y + 6, f"HTTP ({len(requests)} requests)")
    y = _http_band(canvas, requests, y)
    height = y + 10
    _axis(canvas, height)
    for fault in w.faults:
        x = canvas.x(fault.t)
        label = signal_name(fault.signal) if fault.signal else fault.kind
        canvas.add(f'<line class="fault" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height}"/>'
                   f'<text class="fault-label" x="{x + 3:.1f}" y="{AXIS_H + 8}">{_e(label)} → '
                   f'{_e(fault.target or fault.pids)}</text>')
    badge = (f'<span class="v {VERDICT_CLASSES.get(verdict, "inc")}">{_e(verdict)}</span>'
             if verdict else "")
    return (f'<section class="scenario" id="{_anchor(w.scenario or "all")}" '
            f'data-scenario="{_e(w.scenario or "")}"><h2>{_e(w.title)} {badge}</h2>'
            f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{height}" viewBox="0 0 {WIDTH} {height}">{"".join(canvas.parts)}</svg></section>')


def _band_title(canvas: _Canvas, y: int, text: str) -> int:
    canvas.add(f'<text class="band" x="4" y="{y + 12}">{_e(text)}</text>')
    return y + 16


def _axis(canvas: _Canvas, height: int) -> None:
    w = canvas.w
    step = _nice_step((w.end - w.start) / 8)
    first = -((w.zero - w.start) // step) * step
    t = w.zero + first
    while t <= w.end:
        if t >= w.start:
            x = canvas.x(t)
            canvas.add(f'<line class="grid" x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" y2="{height}"/>'
                       f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 10}">{_seconds(t - w.zero)}</text>')
        t += step
    canvas.add(f'<text class="tick-note" x="4" y="{AXIS_H - 10}">'
               f'{"s after the fault" if w.faults else "s after start"}</text>')


def _nice_step(raw_ns: float) -> int:
    for step_ms in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000,
                    120_000, 300_000, 600_000):
        if step_ms * 1_000_000 >= raw_ns:
            return step_ms * 1_000_000
    return 1_800_000_000_000


def _seconds(ns: int) -> str:
    s = ns / 1e9
    return f"{s:+.3f}".rstrip("0").rstrip(".") if abs(s) < 10 else f"{s:+.1f}"


def _lifeline(canvas: _Canvas, model: Model, proc: Process, y: int) -> None:
    w, mid = canvas.w, y + ROW_H / 2
    label = f"{proc.pid} {proc.name_at(w.zero) or proc.name}"[:44]
    code, killed_by = proc.exit_status()
    end_text = ("still running" if proc.exit_t is None else
                f"exited {_seconds(proc.exit_t - w.zero)} s, "
                + (f"code {code}" if code is not None else signal_name(killed_by) if killed_by else "status unknown"))
    canvas.add(f'<text class="proc" x="4" y="{mid + 4:.1f}"><title>{_e(proc.label())}: '
               f'{_e(end_text)}</title>{_e(label)}</text>')
    start = proc.start if proc.start is not None else w.start
    end = proc.exit_t if proc.exit_t is not None else w.end
    cls = "life orphan" if proc.exit_t is None and proc.parent_at(w.end) == 1 else "life"
    canvas.add(f'<line class="{cls}" x1="{canvas.x(start):.1f}" y1="{mid}" x2="{canvas.x(end):.1f}" y2="{mid}">'
               f'<title>{_e(proc.label())}</title></line>')
    if proc.exit_t is not None:
        zombie_end = proc.reap_t if proc.reap_t is not None else w.end
        canvas.add(f'<line class="zombie" x1="{canvas.x(proc.exit_t):.1f}" y1="{mid}" '
                   f'x2="{canvas.x(zombie_end):.1f}" y2="{mid}"/>')
    for receipt in proc.signals:
        if not w.start <= receipt.t <= w.end:
            continue
        x = canvas.x(receipt.t)
        colour = SIGNAL_COLOURS.get(receipt.signal, "#555")
        canvas.add(f'<path class="sig" fill="{colour}" d="M{x - 5:.1f},{y + 1} L{x + 5:.1f},{y + 1} '
                   f'L{x:.1f},{mid:.1f} Z"><title>{_e(receipt.name)} from pid {receipt.sender_pid} '
                   f'({_e(receipt.sender_comm)}) at {_seconds(receipt.t - w.zero)} s</title></path>')
        if receipt.delivered_t is not None:
            canvas.add(f'<circle class="deliver" fill="{colour}" cx="{canvas.x(receipt.delivered_t):.1f}" '
                       f'cy="{mid}" r="3"><title>{_e(receipt.name)} delivered '
                       f'({_e(receipt.disposition)})</title></circle>')
    if proc.exit_t is not None and w.start <= proc.exit_t <= w.end:
        x = canvas.x(proc.exit_t)
        canvas.add(f'<path class="exit" d="M{x - 4:.1f},{mid - 4} L{x + 4:.1f},{mid + 4} M{x - 4:.1f},'
                   f'{mid + 4} L{x + 4:.1f},{mid - 4}"><title>{_e(end_text)}</title></path>')
    if proc.reap_t is not None and w.start <= proc.reap_t <= w.end:
        canvas.add(f'<circle class="reap" cx="{canvas.x(proc.reap_t):.1f}" cy="{mid}" r="4">'
                   f'<title>reaped by pid {proc.reaped_by} at {_seconds(proc.reap_t - w.zero)} s'
                   f'</title></circle>')


def _gpu_band(canvas: _Canvas, model: Model, y: int) -> None:
    devices = model.gpu.devices
    if not devices:
        canvas.add(f'<text class="none" x="{LABEL_W}" y="{y + GPU_H / 2}">no GPU samples</text>')
        return
    top = max(max(s.values, default=0) for s in devices.values()) or 1
    scale = (GPU_H - 8) / top
    canvas.add(f'<text class="axis-note" x="4" y="{y + 10}">{top / 2**30:.1f} GiB</text>'
               f'<text class="axis-note" x="4" y="{y + GPU_H - 2}">0</text>')
    for n, (device, series) in enumerate(sorted(devices.items())):
        points, last = [], None
        for t, used in zip(series.times, series.values):
            if t > canvas.w.end:
                break
            yy = y + GPU_H - used * scale
            if last is not None:
                points.append(f"{canvas.x(t):.1f},{last:.1f}")
            points.append(f"{canvas.x(t):.1f},{yy:.1f}")
            last = yy
        if last is None:
            continue
        points.append(f"{canvas.x(canvas.w.end):.1f},{last:.1f}")
        colour = GPU_COLOURS[n % len(GPU_COLOURS)]
        canvas.add(f'<polyline class="gpu" stroke="{colour}" points="{" ".join(points)}">'
                   f'<title>GPU {device} memory used</title></polyline>'
                   f'<text class="axis-note" fill="{colour}" x="120" y="{y + 22 + 12 * n}">GPU {device}</text>')


def _http_colour(req: Request) -> str:
    if req.end is None:
        return "hung"
    if req.status is None:
        return "conn"
    return {2: "ok", 4: "client", 5: "server"}.get(req.status // 100, "other")


def _http_band(canvas: _Canvas, requests: list[Request], y: int) -> int:
    if not requests:
        canvas.add(f'<text class="none" x="{LABEL_W}" y="{y + 12}">no HTTP requests</text>')
        return y + ROW_H
    kinds = sorted({r.kind for r in requests})
    for kind in kinds:
        canvas.add(f'<text class="proc" x="4" y="{y + 13}">{_e(kind)}</text>')
        for req in (r for r in requests if r.kind == kind):
            x1 = canvas.x(req.t)
            x2 = max(canvas.x(req.end if req.end is not None else canvas.w.end), x1 + 2)
            canvas.add(f'<rect class="http {_http_colour(req)}" x="{x1:.1f}" y="{y + 3}" '
                       f'width="{x2 - x1:.1f}" height="{ROW_H - 6}"><title>{_e(req.describe())}: '
                       f'{_e(req.outcome())} at {_seconds(req.t - canvas.w.zero)} s</title></rect>')
        y += ROW_H
    return y


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 6px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0 0 12px}
dt{color:#666} dd{margin:0}
.warn{color:#a04000} .note{color:#666}
table.verdicts{border-collapse:collapse;margin:8px 0 16px} .verdicts td,.verdicts th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.v{font-weight:600;padding:1px 6px;border-radius:3px}
.v.pass{background:#d5f5e3;color:#1e8449} .v.fail{background:#fadbd8;color:#b03a2e} .v.inc{background:#fcf3cf;color:#9a7d0a}
td.why{color:#555;max-width:520px}
svg.timeline{border:1px solid #ddd;background:#fff}
svg text{font:11px system-ui,sans-serif;fill:#333} svg .band{font-weight:600;fill:#000}
svg .tick,svg .tick-note,svg .axis-note{fill:#777} svg .tick{text-anchor:middle}
svg .grid{stroke:#eee} svg .fault{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3} svg .fault-label{fill:#c0392b}
svg .life{stroke:#2e86c1;stroke-width:6} svg .life.orphan{stroke:#d35400}
svg .zombie{stroke:#999;stroke-width:3;stroke-dasharray:3 3}
svg .exit{stroke:#000;stroke-width:2} svg .reap{fill:none;stroke:#000;stroke-width:1.5}
svg .gpu{fill:none;stroke-width:2} svg .none{fill:#999}
svg .http.ok{fill:#58d68d} svg .http.client{fill:#f5b041} svg .http.server{fill:#e74c3c}
svg .http.conn{fill:#8e44ad} svg .http.hung{fill:#f1948a;stroke:#922b21;stroke-dasharray:2 2} svg .http.other{fill:#aaa}
.legend{color:#555;font-size:12px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body data-scenarios="{count}">
<h1>{title}</h1>
<dl>{facts}</dl>
{warnings}
<h2>Verdicts</h2>
{verdicts}
<p class="legend">Pictures: time 0 is the fault. Processes: blue while running (orange: orphan still
running), dashed grey while a zombie; ▼ signal sent, • delivered, ✕ exit, ○ reap. HTTP: green 2xx,
amber 4xx, red 5xx, purple no response, pink dashed still open (hung).</p>
{sections}
</body></html>
"""
