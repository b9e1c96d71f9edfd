"""omnitrace's verdicts against the ground truth, rule by rule, and the counts the issue asks for:
correct, false pass, false fail, inconclusive (each with omnitrace's stated reason)."""
from __future__ import annotations

from dataclasses import dataclass, field

CORRECT, FALSE_PASS, FALSE_FAIL, INCONCLUSIVE, MISSING = (
    "correct", "false pass", "false fail", "inconclusive", "missing")


@dataclass
class Finding:
    server: str
    row: str
    rule: str
    truth: str            # pass, fail, n/a
    verdict: str          # omnitrace's: pass, fail, inconclusive, or "no verdict"
    outcome: str          # one of the five above
    truth_why: str
    omnitrace_why: str

    def line(self) -> str:
        return (f"{self.outcome:<12} {self.server:<17} {self.row:<26} {self.rule:<20} truth "
                f"{self.truth:<4} omnitrace {self.verdict:<12} | truth: {self.truth_why[:140]} | "
                f"omnitrace: {self.omnitrace_why[:200]}")


def outcome(truth: str, verdict: str) -> str:
    if verdict == "inconclusive":
        return CORRECT if truth == "n/a" else INCONCLUSIVE
    if verdict not in ("pass", "fail"):
        return MISSING
    if verdict == truth:
        return CORRECT
    return FALSE_PASS if verdict == "pass" else FALSE_FAIL


def compare(server: str, row: str, truth: dict, report: dict | None) -> list[Finding]:
    rules = _rules_of(report, row)
    findings = []
    for rule, fact in truth.items():
        got = rules.get(rule)
        verdict = got["verdict"] if got else "no verdict"
        why = _explain(got) if got else _no_verdict(report, row)
        findings.append(Finding(server, row, rule, fact["verdict"], verdict,
                                outcome(fact["verdict"], verdict), fact["why"], why))
    return findings


def _rules_of(report: dict | None, row: str) -> dict:
    for scenario in (report or {}).get("scenarios", []):
        if scenario["id"] == row:
            return {r["id"]: r for r in scenario["rules"]}
    return {}


def _explain(rule: dict) -> str:
    evidence = "; ".join(e["text"] for e in rule.get("evidence", [])[:3])
    return f"{rule.get('summary', '')} [measured {rule.get('measured')}] {evidence}".strip()


def _no_verdict(report: dict | None, row: str) -> str:
    if report is None:
        return "the matrix run wrote no report"
    warnings = [w for w in report.get("warnings", []) if w.startswith(row)]
    return "; ".join(warnings) or "no such rule in the report"


@dataclass
class Tally:
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        names = (CORRECT, FALSE_PASS, FALSE_FAIL, INCONCLUSIVE, MISSING)
        return {name: sum(f.outcome == name for f in self.findings) for name in names}

    def summary(self) -> str:
        counts = self.counts()
        lines = [f"corpus: {len(self.findings)} rule verdicts: " +
                 ", ".join(f"{n} {name}" for name, n in counts.items())]
        lines += [f.line() for f in self.findings if f.outcome != CORRECT]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "findings": [vars(f) for f in self.findings]}
