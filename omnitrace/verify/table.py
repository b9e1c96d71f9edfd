"""The report for a terminal: one line per scenario x rule, then the evidence of what failed."""
from __future__ import annotations

from omnitrace.verify.report import Report
from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS

MARK = {PASS: "pass", FAIL: "FAIL", INCONCLUSIVE: "inconclusive"}


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} {unit}".strip() if unit == "s" else f"{value:g} {unit}".strip()


def render(report: Report, verbose: bool = False) -> str:
    lines = [f"timeline {report.timeline}   matrix {report.matrix}"]
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    header = ("scenario", "rule", "verdict", "measured", "threshold")
    rows = []
    for s in report.scenarios:
        for r in s.rules:
            rows.append((s.id, r.id, MARK[r.verdict], _figure(r.measured, r.unit),
                         _figure(r.threshold, r.unit)))
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    lines.append("")
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    details = []
    for s in report.scenarios:
        # Evidence times are "+N s" from the fault; the fault itself is placed in the recording,
        # in other words, so the two are never read as one clock.
        fault = (f"{s.fault} to {s.target} {s.fault_s:.3f} s into the recording"
                 if s.fault_s is not None else s.fault)
        for r in s.rules:
            if r.verdict == PASS and not verbose:
                continue
            details.append(f"{MARK[r.verdict]}  {s.id} / {r.id}: {r.summary}  ({fault}, "
                           f"server pid {s.server_pid})")
            # every failure shows all its evidence; an inconclusive verdict its first lines
            shown = r.evidence if (r.verdict == FAIL or verbose) else r.evidence[:3]
            for e in shown:
                ref = f" [event {e.ref}]" if e.ref is not None else ""
                details.append(f"    - {e.text}{ref}")
    if details:
        lines += ["", *details]
    counts = report.counts()
    if report.observer_note():
        lines += ["", report.observer_note()]
    lines += ["", f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[INCONCLUSIVE]} "
                  f"inconclusive in {len(report.scenarios)} scenario(s)"]
    return "\n".join(lines)
