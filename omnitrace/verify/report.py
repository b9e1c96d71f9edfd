"""The verdicts of one verify run, and their JSON form (docs/verify.md documents the schema)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnitrace.verify.rules import http_rules
from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, Evidence

REPORT_FORMAT = "omnitrace-verify"
REPORT_VERSION = 1


@dataclass
class RuleVerdict:
    id: str
    title: str
    verdict: str
    measured: float | None
    threshold: float | None
    unit: str
    summary: str
    evidence: list[Evidence]


@dataclass
class ScenarioReport:
    id: str
    row: str | None              # the matrix row checked against (None: no such row)
    origin: str                  # marks | detected
    start_s: float
    end_s: float
    fault_s: float | None
    fault: str
    target: str
    target_pids: list[int]
    server_pid: int | None
    rules: list[RuleVerdict] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        verdicts = {r.verdict for r in self.rules}
        return FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS


@dataclass
class Report:
    timeline: str
    matrix: str
    scenarios: list[ScenarioReport]
    warnings: list[str] = field(default_factory=list)
    t0: int = 0
    health_rate_hz: float | None = None   # the recorder's prober (header); None: not recorded

    def http_rules(self) -> list[str]:
        return http_rules(r.id for s in self.scenarios for r in s.rules)

    def observer_note(self) -> str | None:
        """How health was watched and which verdicts rest on it: the prober is an observer that
        can change what it observes (docs/recorder.md), so a reader must know."""
        rules = ", ".join(self.http_rules())
        if not rules:
            return None
        if self.health_rate_hz is None:
            return f"health probe rate not recorded in the timeline; {rules} rest on HTTP evidence"
        if self.health_rate_hz == 0:
            return (f"health not probed (--health-rate 0); {rules} rest on the requests alone")
        return (f"health probed at {self.health_rate_hz:g} Hz by the recorder; {rules} rest on "
                "those probes and the requests")

    def counts(self) -> dict[str, int]:
        counts = {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}
        for scenario in self.scenarios:
            for rule in scenario.rules:
                counts[rule.verdict] += 1
        return counts

    def exit_code(self, strict: bool = False) -> int:
        """0 all pass, 1 any failure (or, with strict, any inconclusive verdict or no scenario)."""
        counts = self.counts()
        if counts[FAIL]:
            return 1
        if strict and (counts[INCONCLUSIVE] or not self.scenarios):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "timeline": self.timeline,
            "matrix": self.matrix,
            "summary": self.counts(),
            "health_rate_hz": self.health_rate_hz,
            "http_rules": self.http_rules(),
            "warnings": list(self.warnings),
            "scenarios": [_scenario_dict(s, self.t0) for s in self.scenarios],
        }


def _scenario_dict(s: ScenarioReport, t0: int) -> dict[str, Any]:
    return {
        "id": s.id, "row": s.row, "origin": s.origin, "verdict": s.verdict,
        "start_s": s.start_s, "end_s": s.end_s, "fault_s": s.fault_s, "fault": s.fault,
        "target": s.target, "target_pids": s.target_pids, "server_pid": s.server_pid,
        "rules": [{
            "id": r.id, "title": r.title, "verdict": r.verdict, "measured": r.measured,
            "threshold": r.threshold, "unit": r.unit, "summary": r.summary,
            "evidence": [{"text": e.text, "t": e.t,
                          "t_s": None if e.t is None else round((e.t - t0) / 1e9, 6),
                          "event": e.ref, "pid": e.pid} for e in r.evidence],
        } for r in s.rules],
    }
