"""The measured figures of a matrix run, per row, beside their thresholds (docs/gpu-run/).

    python scripts/gpu_matrix_figures.py OUT/report.json [LABEL] >> figures.md
"""
from __future__ import annotations

import json
import sys

# (rule id, column title): the figure each rule measures, seconds after the fault
FIGURES = [
    ("target-exits", "fault → target exit"),
    ("gpu-released", "fault → GPU memory back"),
    ("service-unavailable", "fault → 503 / refused"),
    ("inflight-fail-fast", "fault → in-flight requests failed"),
    ("oom-contract", "OOM → health 503 / 500s"),
]


def cell(rule: dict | None) -> str:
    if rule is None:
        return "-"
    measured = rule.get("measured")
    shown = "n/a" if measured is None else f"{measured * 1000:.0f} ms" if measured < 10 else f"{measured:.1f} s"
    limit = rule.get("threshold")
    limit = "" if limit is None else f" (≤ {limit:g} s)"
    mark = {"pass": "", "fail": " **FAIL**", "inconclusive": " (inconclusive)"}[rule["verdict"]]
    return f"{shown}{limit}{mark}"


def main(path: str, label: str = "") -> int:
    report = json.loads(open(path).read())
    titles = " | ".join(title for _, title in FIGURES)
    print(f"\n#### {label or path}\n")
    print(f"| row | verdicts | {titles} |")
    print("| --- | --- | " + " | ".join("---" for _ in FIGURES) + " |")
    for scenario in report["scenarios"]:
        rules = {r["id"]: r for r in scenario["rules"]}
        counts = {v: sum(r["verdict"] == v for r in rules.values()) for v in ("pass", "fail", "inconclusive")}
        verdicts = f"{counts['pass']} pass, {counts['fail']} fail, {counts['inconclusive']} inconclusive"
        print(f"| {scenario['id']} | {verdicts} | " + " | ".join(cell(rules.get(rid)) for rid, _ in FIGURES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
