"""`omnitrace report`: one self-contained HTML page (inline CSS and SVG, no script, no fetches) that
opens anywhere, from a CI artifact as well as from disk.

The page: a title naming the scenario, the server command and the verdict; the verdict table from
verify's report; then per scenario one picture on a shared time axis (0 = the fault, or the
scenario's start), drawn as stacked bands that share the x axis:
  processes  a lifeline per process of the server tree, its role beside its name: blue while
             running, orange once orphaned (its parent died first; the line says who adopted it),
             dashed while a zombie; one marker per signal however many threads it reached
             (triangle sent, dot delivered), the exit (cross) and the reap (ring). Short-lived
             helpers (uname, sh, a compiler...) share one row; a <details> under the picture
             gives them a row each
  GPU        memory in use per device the tree used, as a step curve (no band when it used none)
  HTTP       per request kind, runs of one outcome (1,300 probes are a few readable bars); a
             kind with few requests keeps a bar per request; a hung one runs off the right edge
Everything after the scenario window's end (the runner's clean-up) is shaded and labelled.
A recording without scenario marks is drawn as one picture of the whole recording.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omnitrace.events import signal_name
from omnitrace.model import Model, Process, build_model
from omnitrace.model.http import Request
from omnitrace.model.marks import Mark
from omnitrace.model.roles import RolePatterns
from omnitrace.timeline import Timeline
from omnitrace.view import (command_summary, display_name, display_roles, fault_marks, fault_name,
                            grouped_signals, marked_windows, recorded_tree, role_patterns)

WIDTH, LABEL_W, RIGHT_PAD = 1100, 300, 20
ROW_H, GPU_H, AXIS_H = 20, 90, 44
ROLE_X, ORPHAN_X = 196, 246          # the role and orphan tags in the label column
MAX_PROCESS_ROWS = 40
SHORT_LIVED_NS = 2_000_000_000       # a helper that lived less than this shares the helpers' row
MIN_GROUPED_HELPERS = 3              # fewer keep a row each
MIN_BAR_PX = 3                       # a run of one outcome stays visible however short
ZOOM_UNDER = 6                       # the fault's aftermath under 1/6 of a picture: a closer one
RUNS_OVER = 60                       # a request kind with more requests is drawn as runs
SIGCHLD = 17                         # not drawn: the child's own exit marker says it
SIGNAL_COLOURS = {9: "#c0392b", 15: "#e67e22", 2: "#8e44ad"}
VERDICT_CLASSES = {"pass": "pass", "fail": "fail", "inconclusive": "inc"}
VERDICT_ORDER = ("fail", "inconclusive", "pass")
GPU_COLOURS = ("#2471a3", "#17a589", "#b7950b", "#884ea0")


def export_html(timeline: Timeline, out: str | Path, report: dict[str, Any] | None = None,
                patterns: RolePatterns | None = None) -> str:
    """Write the report page for `timeline` (and verify's `report` dict, when there is one);
    `patterns` name the roles (default: the matrix the recording names, else the built-in)."""
    page = render_report(timeline, report, patterns)
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
    window_end: int | None = None    # the scenario window's end (its mark's), inside [start, end]


@dataclass
class _Context:
    """What every band of every picture reads: the model, the roles, the recorded tree."""
    model: Model
    roles: dict[int, str]            # id(process) -> server | engine | worker | helper
    tree: set[int] | None            # recorded_tree(): None = everything recorded


def render_report(timeline: Timeline, report: dict[str, Any] | None = None,
                  patterns: RolePatterns | None = None) -> str:
    model = build_model(timeline)
    patterns = patterns or role_patterns(timeline.header, None, timeline.path)
    ctx = _Context(model, display_roles(model, patterns), recorded_tree(model))
    windows = _windows(model)
    sections = [_scenario_section(ctx, w, _scenario_result(report, w.scenario)) for w in windows]
    header = timeline.header
    title = _page_title(model, windows, report)
    command = " ".join(header.get("command", []))
    facts = [("recording", timeline.path), ("recorded command", command_summary(
                 header.get("command", []), 160) or "attached / whole machine"),
             ("host", header.get("host", "")),
             ("duration", f"{(timeline.t_end - timeline.t0) / 1e9:.2f} s"),
             ("sources", ", ".join(sorted(header.get("sources") or {}))),
             ("events", str(len(timeline.events)))]
    if report and report.get("matrix"):
        facts.append(("matrix", report["matrix"]))
    facts.append(("health probes", _probe_fact(header, report)))
    warnings = list(timeline.warnings)
    lost = sum(count for _, _, _, count, _ in model.lost)
    if lost:
        warnings.append(f"{lost} events were lost during the recording; windows with losses cannot pass")
    return _PAGE.format(
        title=_e(title), css=_CSS, command=_e(command),
        facts="".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts),
        warnings="".join(f'<p class="warn">{_e(w)}</p>' for w in warnings),
        verdicts=_verdict_table(report), sections="\n".join(sections),
        count=len(windows))


def _probe_fact(header: dict[str, Any], report: dict[str, Any] | None) -> str:
    """The prober's rate and the verdicts that rest on HTTP: the observer can change the observed."""
    rate = header.get("health_rate_hz")
    watched = ("not recorded" if not isinstance(rate, (int, float)) else
               "off (--health-rate 0)" if rate == 0 else f"{rate:g} Hz")
    rules = (report or {}).get("http_rules") or []
    return watched + (f"; resting on HTTP: {', '.join(rules)}" if rules else "")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page_title(model: Model, windows: list[_Window], report: dict[str, Any] | None) -> str:
    """'no-load/sigkill/serve · vllm serve tiny --port 8000 … · fail': what was done to which
    server, and how it went (the worst scenario's verdict). Scenarios and server from the marks,
    else from verify's report (it detects scenarios in a recording without marks)."""
    reported = (report or {}).get("scenarios", [])
    ids = [w.scenario for w in windows if w.scenario] or [s.get("id") for s in reported]
    what = ids[0] if len(ids) == 1 else f"{len(ids)} scenarios" if ids else "no scenario"
    server_pid = next((p for p in [w.server_pid for w in windows]
                       + [s.get("server_pid") for s in reported] if p), None)
    server = model.process(server_pid) if server_pid else None
    verdicts = {_scenario_result(report, s) for s in ids}
    return " · ".join(part for part in [
        what, command_summary(server.cmdline, 50) if server is not None else "",
        next((v for v in VERDICT_ORDER if v in verdicts), "no verdict")] if part)


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
                (v for v in VERDICT_ORDER if v in verdicts), None)
    return None


def _anchor(scenario: Any) -> str:
    return "scenario-" + "".join(c if c.isalnum() else "-" for c in str(scenario))


# --- windows --------------------------------------------------------------------------------------
def _windows(model: Model) -> list[_Window]:
    windows = []
    for mark, inside in marked_windows(model):
        pad = max((mark.end - mark.t) // 10, 50_000_000)
        end = mark.end + pad
        if model.t_end > mark.end:        # the picture stops where the recording did
            end = min(end, model.t_end)
        windows.append(_Window(str(mark.scenario), mark.scenario, mark.t - pad, end,
                               inside[0].t if inside else mark.t, mark.server_pid, inside,
                               window_end=mark.end))
    if not windows:
        faults = fault_marks(model)
        windows.append(_Window("whole recording", None, model.t0, max(model.t_end, model.t0 + 1),
                               faults[0].t if faults else model.t0, None, faults))
    return windows


def _processes(ctx: _Context, w: _Window) -> list[Process]:
    """The server tree (and fault targets) when the marks name it, else the recorded tree."""
    model = ctx.model
    root = model.process(w.server_pid, w.start) if w.server_pid else None
    if root is not None:
        pool = [root, *model.descendants(root)]
        wanted = {p for f in w.faults for p in f.pids}
        pool += [p for p in model.processes if p.pid in wanted and p not in pool]
    else:
        pool = [p for p in model.processes if ctx.tree is None or id(p) in ctx.tree]
    shown = [p for p in pool if (p.start is None or p.start <= w.end)
             and (p.exit_t is None or (p.reap_t or p.exit_t) >= w.start)]
    shown.sort(key=lambda p: (p.start or 0, p.pid))
    return shown


def _short_lived_helper(ctx: _Context, proc: Process, w: _Window) -> bool:
    targets = {pid for f in w.faults for pid in f.pids}
    return (ctx.roles.get(id(proc)) == "helper" and proc.pid not in targets
            and proc.start is not None and proc.exit_t is not None
            and proc.exit_t - proc.start < SHORT_LIVED_NS)


def _split_helpers(ctx: _Context, procs: list[Process], w: _Window):
    """(rows of their own, short-lived helpers that share one row)."""
    helpers = [p for p in procs if _short_lived_helper(ctx, p, w)]
    if len(helpers) < MIN_GROUPED_HELPERS:
        return procs[:MAX_PROCESS_ROWS], []
    return [p for p in procs if p not in helpers][:MAX_PROCESS_ROWS], helpers


# --- drawing --------------------------------------------------------------------------------------
class _Canvas:
    """One band of a picture. Every band of a picture maps time to x alike, so the fault line and
    the window's end run straight through the stacked bands."""

    def __init__(self, w: _Window):
        self.w = w
        self.parts: list[str] = []
        self.span = max(w.end - w.start, 1)
        self.adopters_named: set[str] = set()   # an adopter is named on the first orphan's line

    def x(self, t: int) -> float:
        t = min(max(t, self.w.start), self.w.end)
        return LABEL_W + (t - self.w.start) / self.span * (WIDTH - LABEL_W - RIGHT_PAD)

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def svg(self, height: float, top: int = 0, css: str = "timeline") -> str:
        """The band as an <svg>: the after-window shade and the grid behind what was drawn, the
        fault and the window's end over it."""
        under, over = _frame(self, top, height)
        body = "".join(under + self.parts + over)
        return (f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
                f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}">{body}</svg>')


def _frame(canvas: _Canvas, top: int, height: float) -> tuple[list[str], list[str]]:
    w, under, over = canvas.w, [], []
    if w.window_end is not None and w.window_end < w.end:
        x = canvas.x(w.window_end)
        under.append(f'<rect class="after" x="{x:.1f}" y="{top}" width="{canvas.x(w.end) - x:.1f}" '
                     f'height="{height - top:.0f}"><title>after the scenario window: what the '
                     f'runner did to clean up</title></rect>')
        over.append(f'<line class="window-end" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" '
                    f'y2="{height:.0f}"/>')
    for t in _ticks(w):
        x = canvas.x(t)
        under.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height:.0f}"/>')
    for fault in w.faults:
        x = canvas.x(fault.t)
        over.append(f'<line class="fault" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height:.0f}"/>')
    return under, over


def _ticks(w: _Window) -> list[int]:
    step = _nice_step((w.end - w.start) / 8)
    t = w.zero - ((w.zero - w.start) // step) * step
    return [t + n * step for n in range(int((w.end - t) // step) + 1)]


def _axis(canvas: _Canvas) -> None:
    """Tick labels, the fault's label and the window's end, in the band's top AXIS_H pixels."""
    w = canvas.w
    for t in _ticks(w):
        canvas.add(f'<text class="tick" x="{canvas.x(t):.1f}" y="12">{_seconds(t - w.zero)}</text>')
    canvas.add(f'<text class="tick-note" x="4" y="12">'
               f'{"s after the fault" if w.faults else "s after start"}</text>')
    for fault in w.faults:
        label = fault_name(fault)
        pids = ", ".join(str(p) for p in fault.pids)
        text = f"{label} → {fault.target or ''} {pids}"
        x = canvas.x(fault.t)
        canvas.add(f'<text class="fault-label" {_text_x(x, 7 * len(text))} y="26">'
                   f'{_e(text)}</text>')
    if w.window_end is not None and w.window_end < w.end:
        _window_end_labels(canvas, w.window_end)


def _window_end_labels(canvas: _Canvas, window_end: int) -> None:
    """'window end +40.1 s' left of its line; 'after the window' right of it where it fits."""
    x = canvas.x(window_end)
    canvas.add(f'<text class="window-label" x="{x - 3:.1f}" y="{AXIS_H - 4}">window end '
               f'{_seconds(window_end - canvas.w.zero)} s</text>')
    if canvas.x(canvas.w.end) - x > 100:
        canvas.add(f'<text class="after-label" x="{x + 3:.1f}" y="{AXIS_H - 4}">after the window'
                   f'</text>')


def _nice_step(raw_ns: float) -> int:
    for step_ms in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000,
                    120_000, 300_000, 600_000):
        if step_ms * 1_000_000 >= raw_ns:
            return step_ms * 1_000_000
    return 1_800_000_000_000


def _seconds(ns: int) -> str:
    s = ns / 1e9
    return f"{s:+.3f}".rstrip("0").rstrip(".") if abs(s) < 10 else f"{s:+.1f}"


def _band_title(canvas: _Canvas, y: float, text: str) -> float:
    canvas.add(f'<text class="band" x="4" y="{y + 12:.0f}">{_e(text)}</text>')
    return y + 16


# --- one scenario's picture -----------------------------------------------------------------------
def _scenario_section(ctx: _Context, w: _Window, verdict: str | None) -> str:
    procs = _processes(ctx, w)
    badge = (f'<span class="v {VERDICT_CLASSES.get(verdict, "inc")}">{_e(verdict)}</span>'
             if verdict else "")
    lanes = _lanes(ctx.model, w)
    notes = [_gpu_note(ctx, w, procs), *_http_notes(w, lanes), *_orphan_notes(ctx, w, procs)]
    zoom = _around_the_fault(w)
    closer = (f'<h3>around the fault: {_seconds(zoom.start - zoom.zero)} s to '
              f'{_seconds(zoom.end - zoom.zero)} s</h3>'
              f'{_picture(ctx, zoom, _processes(ctx, zoom), _lanes(ctx.model, zoom))}'
              if zoom else "")
    return (f'<section class="scenario" id="{_anchor(w.scenario or "all")}" '
            f'data-scenario="{_e(w.scenario or "")}"><h2>{_e(w.title)} {badge}</h2>'
            f'{_picture(ctx, w, procs, lanes)}{"".join(_note(n) for n in notes if n)}'
            f'{_helpers_details(ctx, w, _split_helpers(ctx, procs, w)[1])}{closer}</section>')


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _picture(ctx: _Context, w: _Window, procs: list[Process], lanes: list[_Lane]) -> str:
    rows, helpers = _split_helpers(ctx, procs, w)
    bands = [_process_band(ctx, w, rows, helpers), _gpu_band(ctx, w, procs),
             _http_band(w, lanes)]
    return f'<div class="picture">{"".join(b for b in bands if b)}</div>'


def _around_the_fault(w: _Window) -> _Window | None:
    """A second, closer picture when the fault and what followed take less than a sixth of
    the scenario's (a long start-up before it squeezes them into a few pixels): from as long
    before the fault as the picture runs after it (at least a second) to the end."""
    after = w.end - w.zero
    if not w.faults or after * ZOOM_UNDER >= w.end - w.start:
        return None
    lead = max(after, 1_000_000_000)
    return replace(w, start=max(w.zero - lead, w.start))


def _process_band(ctx: _Context, w: _Window, rows: list[Process], helpers: list[Process]) -> str:
    canvas = _Canvas(w)
    _axis(canvas)
    count = f"{len(rows)}" + (f" + {len(helpers)} short-lived helpers" if helpers else "")
    y = _band_title(canvas, AXIS_H, f"processes ({count})")
    for proc in rows:
        _lifeline(canvas, ctx, proc, y)
        y += ROW_H
    if helpers:
        _helpers_row(canvas, helpers, y)
        y += ROW_H
    return canvas.svg(y + 4)


def _lifeline(canvas: _Canvas, ctx: _Context, proc: Process, y: float) -> None:
    mid = y + ROW_H / 2
    orphaned = _orphaned(proc, canvas.w)
    _label(canvas, ctx, proc, mid, orphaned)
    _life_segments(canvas, ctx, proc, mid, orphaned)
    _signal_marks(canvas, proc, y, mid)
    _end_marks(canvas, proc, mid)


def _end_text(proc: Process, zero: int) -> str:
    code, killed_by = proc.exit_status()
    if proc.exit_t is None:
        return "still running"
    how = (f"code {code}" if code is not None else signal_name(killed_by) if killed_by
           else "status unknown")
    return f"exited {_seconds(proc.exit_t - zero)} s, {how}"


def _pid_text(proc: Process) -> str:
    """'48211 (ns 7)': the host pid, and the one the container's own logs show."""
    return proc.pid_label().removeprefix("pid ")


def _label(canvas: _Canvas, ctx: _Context, proc: Process, mid: float, orphaned) -> None:
    name = display_name(proc.name_at(canvas.w.zero) or proc.name, proc.cmdline, 22)
    tip = f"{proc.label()}: {_end_text(proc, canvas.w.zero)}"
    canvas.add(f'<text class="proc" x="4" y="{mid + 4:.1f}"><title>{_e(tip)}</title>'
               f'{_e(_pid_text(proc))} {_e(name)}</text>')
    role = ctx.roles.get(id(proc))
    if role:
        canvas.add(f'<text class="role" x="{ROLE_X}" y="{mid + 4:.1f}">{_e(role)}</text>')
    if orphaned is not None and _in_window(canvas.w, orphaned.t):
        canvas.add(f'<text class="orphan-tag" x="{ORPHAN_X}" y="{mid + 4:.1f}">orphan</text>')


def _in_window(w: _Window, t: int) -> bool:
    """Before the scenario window's end (everything is, in a picture without one)."""
    return w.window_end is None or t <= w.window_end


def _orphaned(proc: Process, w: _Window):
    """The first re-parenting (its parent died first) before the picture's end, or None."""
    for before, change in zip(proc.parents, proc.parents[1:]):
        if change.ppid != before.ppid and change.t <= w.end:
            return change
    return None


def _adopter(ctx: _Context, change, short: bool = False) -> str:
    """Who an orphan was handed to, in words: init, the recorded command, or a subreaper
    ('9711 (subreaper)' when short)."""
    if change.ppid is None:
        return "a parent the recording does not name"
    if change.ppid == 1:
        return "init (pid 1)"
    parent = ctx.model.process(change.ppid, change.t)
    runner = parent is not None and parent.ppid == ctx.model.timeline.header.get("recorder_pid")
    if short:
        return f"{change.ppid} ({'the runner' if runner else 'subreaper'})"
    name = f" {display_name(parent.name, parent.cmdline, 40)}" if parent is not None else ""
    what = "the recorded command, a subreaper" if runner else "a subreaper"
    return f"pid {change.ppid}{name} ({what})"


def _life_segments(canvas: _Canvas, ctx: _Context, proc: Process, mid: float, orphaned) -> None:
    """Running (blue) until re-parented, orphan (orange) after; zombie (dashed) until reaped."""
    w = canvas.w
    start = proc.start if proc.start is not None else w.start
    end = proc.exit_t if proc.exit_t is not None else w.end
    split = orphaned.t if orphaned is not None and start <= orphaned.t <= end else end
    canvas.add(f'<line class="life" x1="{canvas.x(start):.1f}" y1="{mid}" '
               f'x2="{canvas.x(split):.1f}" y2="{mid}"><title>{_e(proc.label())}</title></line>')
    if split < end:
        x = canvas.x(split)
        canvas.add(f'<line class="life orphan" x1="{x:.1f}" y1="{mid}" x2="{canvas.x(end):.1f}" '
                   f'y2="{mid}"><title>{_e(proc.label())}: orphaned at '
                   f'{_seconds(split - w.zero)} s, re-parented to {_e(_adopter(ctx, orphaned))}'
                   f'</title></line>')
        adopter = _adopter(ctx, orphaned, short=True)
        if adopter not in canvas.adopters_named:
            canvas.adopters_named.add(adopter)
            _orphan_note_on_line(canvas, x, mid, f"→ {adopter}")
    if proc.exit_t is not None:
        zombie_end = proc.reap_t if proc.reap_t is not None else w.end
        canvas.add(f'<line class="zombie" x1="{canvas.x(proc.exit_t):.1f}" y1="{mid}" '
                   f'x2="{canvas.x(zombie_end):.1f}" y2="{mid}"/>')


def _orphan_note_on_line(canvas: _Canvas, x: float, mid: float, text: str) -> None:
    """Above the orange line where it starts."""
    canvas.add(f'<text class="orphan-note" {_text_x(x, 110)} y="{mid - 5:.1f}">{_e(text)}</text>')


def _text_x(x: float, room: float) -> str:
    """A label beside the line at x: after it, or before it (ending there) when fewer than `room`
    pixels are left to the right edge."""
    if x > WIDTH - RIGHT_PAD - room:
        return f'x="{x - 4:.1f}" text-anchor="end"'
    return f'x="{x + 4:.1f}"'


def _signal_marks(canvas: _Canvas, proc: Process, y: float, mid: float) -> None:
    """One triangle (sent) and one dot (delivered) per signal, not per thread it reached."""
    w = canvas.w
    for group in grouped_signals(proc):
        if group.first.signal == SIGCHLD or not w.start <= group.t <= w.end:
            continue
        x = canvas.x(group.t)
        colour = SIGNAL_COLOURS.get(group.first.signal, "#555")
        tip = f"{group.describe()} at {_seconds(group.t - w.zero)} s"
        canvas.add(f'<path class="sig" fill="{colour}" d="M{x - 5:.1f},{y + 1} L{x + 5:.1f},{y + 1} '
                   f'L{x:.1f},{mid:.1f} Z"><title>{_e(tip)}</title></path>')
        if group.first.delivered_t is not None:
            canvas.add(f'<circle class="deliver" fill="{colour}" '
                       f'cx="{canvas.x(group.first.delivered_t):.1f}" cy="{mid}" r="3">'
                       f'<title>{_e(tip)}</title></circle>')


def _end_marks(canvas: _Canvas, proc: Process, mid: float) -> None:
    w = canvas.w
    if proc.exit_t is not None and w.start <= proc.exit_t <= w.end:
        x = canvas.x(proc.exit_t)
        canvas.add(f'<path class="exit" d="M{x - 4:.1f},{mid - 4} L{x + 4:.1f},{mid + 4} M{x - 4:.1f},'
                   f'{mid + 4} L{x + 4:.1f},{mid - 4}"><title>{_e(_end_text(proc, w.zero))}'
                   f'</title></path>')
    if proc.reap_t is not None and w.start <= proc.reap_t <= w.end:
        canvas.add(f'<circle class="reap" cx="{canvas.x(proc.reap_t):.1f}" cy="{mid}" r="4">'
                   f'<title>reaped by {_e(proc.reaper_label())} at {_seconds(proc.reap_t - w.zero)} s'
                   f'</title></circle>')


# --- short-lived helpers --------------------------------------------------------------------------
def _helper_names(helpers: list[Process]) -> str:
    counts = Counter(display_name(p.name, [], 20) for p in helpers)
    return ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in counts.most_common())


def _helpers_row(canvas: _Canvas, helpers: list[Process], y: float) -> None:
    """One row, a tick per helper's life: when the tree forked its helpers, without a row each."""
    mid = y + ROW_H / 2
    canvas.add(f'<text class="proc helpers" x="4" y="{mid + 4:.1f}"><title>'
               f'{_e(_helper_names(helpers))}</title>{len(helpers)} short-lived helpers</text>'
               f'<text class="role" x="{ROLE_X}" y="{mid + 4:.1f}">helper</text>')
    for proc in helpers:
        x1 = canvas.x(proc.start)
        x2 = max(canvas.x(proc.exit_t), x1 + 2)
        canvas.add(f'<rect class="helper" x="{x1:.1f}" y="{mid - 4:.1f}" width="{x2 - x1:.1f}" '
                   f'height="8"><title>{_e(proc.label())}: {_e(_end_text(proc, canvas.w.zero))}'
                   f'</title></rect>')


def _helpers_details(ctx: _Context, w: _Window, helpers: list[Process]) -> str:
    if not helpers:
        return ""
    canvas = _Canvas(w)
    y = 2
    for proc in helpers:
        _lifeline(canvas, ctx, proc, y)
        y += ROW_H
    return (f'<details class="helpers"><summary>{len(helpers)} short-lived helpers '
            f'({_e(_helper_names(helpers))}): a row each</summary>{canvas.svg(y + 4)}</details>')


# --- GPU ------------------------------------------------------------------------------------------
def _used_devices(ctx: _Context, w: _Window, procs: list[Process]) -> list[int]:
    """Devices the tree held memory on; with no per-process samples at all, devices whose memory
    changed in the picture. A device nobody used (a simulated one on a GPU-less machine) is none."""
    gpu = ctx.model.gpu
    if gpu.by_pid:
        pids = {p.pid for p in procs}
        return sorted({d for pid in pids for d, s in gpu.by_pid.get(pid, {}).items() if s.held()})
    return sorted(d for d, s in gpu.devices.items()
                  if len({v for t, v in zip(s.times, s.values) if w.start <= t <= w.end}) > 1)


def _gpu_note(ctx: _Context, w: _Window, procs: list[Process]) -> str:
    devices = ctx.model.gpu.devices
    if not devices or _used_devices(ctx, w, procs):
        return ""
    backend = (ctx.model.timeline.header.get("sources") or {}).get("gpu", {}).get("backend", "")
    return (f"GPU: {len(devices)} device(s) sampled{f' ({backend})' if backend else ''}, none used "
            f"by the server's tree: no GPU band.")


def _gpu_band(ctx: _Context, w: _Window, procs: list[Process]) -> str:
    devices = _used_devices(ctx, w, procs)
    if not devices:
        return ""
    canvas = _Canvas(w)
    y = _band_title(canvas, 0, "GPU memory")
    series = {d: ctx.model.gpu.devices[d] for d in devices if d in ctx.model.gpu.devices}
    top = max((max(s.values, default=0) for s in series.values()), default=0) or 1
    scale = (GPU_H - 8) / top
    canvas.add(f'<text class="axis-note" x="4" y="{y + 10}">{top / 2**30:.1f} GiB</text>'
               f'<text class="axis-note" x="4" y="{y + GPU_H - 2}">0</text>')
    for n, (device, samples) in enumerate(sorted(series.items())):
        colour = GPU_COLOURS[n % len(GPU_COLOURS)]
        points = _step_points(canvas, samples, y + GPU_H, scale)
        if points:
            canvas.add(f'<polyline class="gpu" stroke="{colour}" points="{points}">'
                       f'<title>GPU {device} memory used</title></polyline>'
                       f'<text class="axis-note" fill="{colour}" x="120" y="{y + 22 + 12 * n}">'
                       f'GPU {device}</text>')
    return canvas.svg(y + GPU_H + 6)


def _step_points(canvas: _Canvas, series, base: float, scale: float) -> str:
    points, last = [], None
    for t, used in zip(series.times, series.values):
        if t > canvas.w.end:
            break
        yy = base - used * scale
        if last is not None:
            points.append(f"{canvas.x(t):.1f},{last:.1f}")
        points.append(f"{canvas.x(t):.1f},{yy:.1f}")
        last = yy
    if last is None:
        return ""
    points.append(f"{canvas.x(canvas.w.end):.1f},{last:.1f}")
    return " ".join(points)


# --- HTTP -----------------------------------------------------------------------------------------
def _outcome(req: Request) -> tuple[str, str]:
    """(colour class, words): what a run of requests has in common."""
    if req.end is None:
        return "hung", "still open"
    if req.status is None:
        return "conn", req.error_type or "no answer"
    if req.error_type is not None and req.error_type != str(req.status):
        return "conn", f"HTTP {req.status}, then {req.error_type}"
    return {2: "ok", 4: "client", 5: "server"}.get(req.status // 100, "other"), f"HTTP {req.status}"


@dataclass
class _Run:
    """Consecutive requests of one kind with one outcome."""
    css: str
    words: str
    start: int
    end: int | None      # None: the last one never answered
    count: int = 1


def _runs(requests: list[Request]) -> list[_Run]:
    runs: list[_Run] = []
    for req in sorted(requests, key=lambda r: r.t):
        css, words = _outcome(req)
        last = runs[-1] if runs else None
        if last is not None and (last.css, last.words) == (css, words):
            last.count += 1
            last.end = None if req.end is None or last.end is None else max(last.end, req.end)
        else:
            runs.append(_Run(css, words, req.t, req.end))
    return runs


@dataclass
class _Lane:
    """One request kind's row of the HTTP band."""
    kind: str
    requests: list[Request]
    runs: list[_Run] | None      # drawn as runs of one outcome (and told in words), else None


def _lanes(model: Model, w: _Window) -> list[_Lane]:
    requests = model.requests_between(w.start, w.end)
    lanes = []
    for kind in sorted({r.kind for r in requests}):
        of_kind = [r for r in requests if r.kind == kind]
        lanes.append(_Lane(kind, of_kind, _runs(of_kind) if _as_runs(kind, of_kind) else None))
    return lanes


def _http_band(w: _Window, lanes: list[_Lane]) -> str:
    canvas = _Canvas(w)
    y = _band_title(canvas, 0, f"HTTP ({sum(len(lane.requests) for lane in lanes)} requests)")
    if not lanes:
        canvas.add(f'<text class="none" x="{LABEL_W}" y="{y + 12}">no HTTP requests</text>')
        return canvas.svg(y + ROW_H)
    for lane in lanes:
        canvas.add(f'<text class="proc" x="4" y="{y + 14}">{_e(lane.kind)}</text>')
        if lane.runs is not None:
            _draw_runs(canvas, lane.runs, y)
        else:
            _draw_requests(canvas, lane.requests, y)
        y += ROW_H
    return canvas.svg(y + 4)


def _draw_runs(canvas: _Canvas, runs: list[_Run], y: float) -> None:
    """Wide runs first, narrow ones over them: a short run (the 200s before a fault) stays seen."""
    zero = canvas.w.zero
    bars = []
    for run in runs:
        x1 = canvas.x(run.start)
        x2 = max(canvas.x(run.end if run.end is not None else canvas.w.end), x1 + MIN_BAR_PX)
        bars.append((x2 - x1, x1, run))
    for width, x1, run in sorted(bars, key=lambda b: -b[0]):
        span = f"{_seconds(run.start - zero)} s to " + (
            f"{_seconds(run.end - zero)} s" if run.end is not None else "the end")
        label = f"{run.words} ×{run.count}"
        text = (f'<text class="run-label" x="{x1 + 3:.1f}" y="{y + 14}">{_e(label)}</text>'
                if width > 7 * len(label) else "")
        canvas.add(f'<rect class="http {run.css}" x="{x1:.1f}" y="{y + 3}" width="{width:.1f}" '
                   f'height="{ROW_H - 6}"><title>{_e(label)}: {span}</title></rect>{text}')


def _as_runs(kind: str, requests: list[Request]) -> bool:
    return kind == "health" or len(requests) > RUNS_OVER


def _http_notes(w: _Window, lanes: list[_Lane]) -> list[str]:
    """Each lane drawn as runs, in words, so a run of a few pixels is still read: 'health:
    refused ×2029 (-102.9 to -0.7 s) → HTTP 200 ×13 (-0.65 to -0.04 s) → ...'."""
    notes = []
    for lane in lanes:
        if lane.runs is not None:
            words = [_run_words(run, w.zero) for run in lane.runs]
            if len(words) > 10:
                words = words[:4] + [f"… {len(words) - 9} more runs …"] + words[-5:]
            notes.append(f"{lane.kind}: {' → '.join(words)}")
    return notes


def _run_words(run: _Run, zero: int) -> str:
    first = _seconds(run.start - zero)
    if run.count == 1:
        return f"{run.words} ({first} s)"
    last = _seconds(run.end - zero) if run.end is not None else "the end"
    return f"{run.words} ×{run.count} ({first} to {last} s)"


def _draw_requests(canvas: _Canvas, requests: list[Request], y: float) -> None:
    """A bar per request, answered ones first so a failure drawn over them is not hidden."""
    zero = canvas.w.zero
    for req in sorted(requests, key=lambda r: _outcome(r)[0] == "ok", reverse=True):
        x1 = canvas.x(req.t)
        x2 = max(canvas.x(req.end if req.end is not None else canvas.w.end), x1 + 2)
        canvas.add(f'<rect class="http {_outcome(req)[0]}" x="{x1:.1f}" y="{y + 3}" '
                   f'width="{x2 - x1:.1f}" height="{ROW_H - 6}"><title>{_e(req.describe())}: '
                   f'{_e(req.outcome())} at {_seconds(req.t - zero)} s</title></rect>')


# --- orphans, in words ----------------------------------------------------------------------------
def _orphan_notes(ctx: _Context, w: _Window, procs: list[Process]) -> list[str]:
    """'Orphans: 10381 VLLM::EngineCore, 10784 VLLM::Worker re-parented at +0.001 s to pid 9711
    ... (the recorded command, a subreaper); alive at the window's end; ended +3.0 s.'"""
    by_adopter: dict[str, list[Process]] = {}
    for proc in procs:
        change = _orphaned(proc, w)
        if change is not None:
            by_adopter.setdefault(_adopter(ctx, change), []).append(proc)
    return [_orphan_note(w, adopter, orphans) for adopter, orphans in by_adopter.items()]


def _orphan_note(w: _Window, adopter: str, orphans: list[Process]) -> str:
    items = []
    for proc in orphans:
        t = _orphaned(proc, w).t
        late = "" if _in_window(w, t) else ", after the window"
        items.append(f"{_pid_text(proc)} {display_name(proc.name, proc.cmdline, 24)} "
                     f"({_seconds(t - w.zero)} s{late})")
    text = f"Orphans re-parented to {adopter}: {', '.join(items)}"
    if w.window_end is not None:
        alive = [p for p in orphans if p.exit_t is None or p.exit_t > w.window_end]
        if alive:
            text += f"; {len(alive)} still running at the window's end"
    return text + "."


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 6px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0 0 12px}
dt{color:#666} dd{margin:0}
.warn{color:#a04000} .note{color:#666;margin:4px 0}
table.verdicts{border-collapse:collapse;margin:8px 0 16px} .verdicts td,.verdicts th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.v{font-weight:600;padding:1px 6px;border-radius:3px}
.v.pass{background:#d5f5e3;color:#1e8449} .v.fail{background:#fadbd8;color:#b03a2e} .v.inc{background:#fcf3cf;color:#9a7d0a}
td.why{color:#555;max-width:520px}
.picture{display:inline-block;border:1px solid #ddd;background:#fff;line-height:0}
.picture svg,details.helpers svg{display:block}
details.helpers{margin:4px 0} details.helpers summary{cursor:pointer;color:#555}
details.helpers svg{border:1px solid #ddd;background:#fff}
svg text{font:11px system-ui,sans-serif;fill:#333} svg .band{font-weight:600;fill:#000}
svg .tick,svg .tick-note,svg .axis-note{fill:#777} svg .tick{text-anchor:middle}
svg .grid{stroke:#eee} svg .fault{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3} svg .fault-label{fill:#c0392b}
svg .after{fill:#f0f0f0} svg .window-end{stroke:#555;stroke-width:1.5}
svg .window-label{fill:#555;text-anchor:end} svg .after-label{fill:#888;font-style:italic}
svg .role{fill:#888} svg .orphan-tag,svg .orphan-note{fill:#d35400} svg .orphan-note{font-size:10px}
svg .life{stroke:#2e86c1;stroke-width:6} svg .life.orphan{stroke:#d35400}
svg .zombie{stroke:#999;stroke-width:3;stroke-dasharray:3 3}
svg .exit{stroke:#000;stroke-width:2} svg .reap{fill:none;stroke:#000;stroke-width:1.5}
svg .helper{fill:#7fb3d5} svg .helpers{fill:#555}
svg .gpu{fill:none;stroke-width:2} svg .none{fill:#999}
svg .http.ok{fill:#58d68d} svg .http.client{fill:#f5b041} svg .http.server{fill:#e74c3c}
svg .http.conn{fill:#8e44ad} svg .http.hung{fill:#f1948a;stroke:#922b21;stroke-dasharray:2 2} svg .http.other{fill:#aaa}
svg .run-label{fill:#fff;font-size:10px} h3{font-size:14px;margin:14px 0 4px;color:#444}
.legend{color:#555;font-size:12px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body data-scenarios="{count}">
<h1 title="{command}">{title}</h1>
<dl>{facts}</dl>
{warnings}
<h2>Verdicts</h2>
{verdicts}
<p class="legend">Pictures: time 0 is the fault; grey after the scenario window's end (the runner's
clean-up). Processes: blue while running, orange once orphaned (its parent died first; the line
names who adopted it), dashed grey while a zombie; ▼ signal sent, • delivered (one mark per signal,
however many threads it reached; SIGCHLD not drawn), ✕ exit, ○ reap. HTTP: runs of one outcome,
green 2xx, amber 4xx, red 5xx, purple no answer (refused, reset), pink dashed still open (hung).</p>
{sections}
</body></html>
"""
