"""A matrix run's report.json as Markdown: one table row per rule with the measured figure beside
its threshold, then the evidence of every rule that failed or was not decided, as omnitrace
printed it (docs/vllm-cpu-run/).

    python scripts/matrix_results_md.py OUT/report.json > results.md
"""
from __future__ import annotations

import json
import sys


def figure(rule: dict) -> str:
    measured, unit = rule.get("measured"), rule.get("unit") or "s"
    if measured is None:
        return "-"
    return f"{measured:.3f} {unit}"


def limit(rule: dict) -> str:
    threshold = rule.get("threshold")
    return "-" if threshold is None else f"{threshold:g} {rule.get('unit') or 's'}"


def verdict_table(report: dict) -> list[str]:
    lines = ["| row | rule | verdict | measured | threshold | summary |",
             "| --- | --- | --- | --- | --- | --- |"]
    for scenario in report["scenarios"]:
        for rule in scenario["rules"]:
            verdict = rule["verdict"].upper() if rule["verdict"] == "fail" else rule["verdict"]
            summary = rule.get("summary", "").replace("|", "\\|")
            lines.append(f"| {scenario['id']} | {rule['id']} | {verdict} | {figure(rule)} | "
                         f"{limit(rule)} | {summary} |")
    return lines


def evidence_blocks(report: dict) -> list[str]:
    lines = []
    for scenario in report["scenarios"]:
        for rule in scenario["rules"]:
            if rule["verdict"] == "pass":
                continue
            lines += ["", f"**{scenario['id']} / {rule['id']}: {rule['verdict']}** "
                      f"({rule.get('summary', '')}; fault {scenario.get('fault')} to "
                      f"{scenario.get('target')} at +{scenario.get('fault_s') or 0:.3f} s of the "
                      f"recording, server pid {scenario.get('server_pid')})", "", "```"]
            lines += [f"- {e['text']}" for e in rule.get("evidence", [])] or ["(no evidence)"]
            lines.append("```")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: matrix_results_md.py REPORT.json", file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"matrix_results_md.py: {argv[1]}: {exc}", file=sys.stderr)
        return 2
    summary = report.get("summary", {})
    print(f"Matrix `{report.get('matrix')}`: {summary}\n")
    print("\n".join(verdict_table(report)))
    if report.get("warnings"):
        print("\nWarnings printed by the run:\n")
        print("\n".join(f"- {w}" for w in report["warnings"]))
    print("\n".join(evidence_blocks(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
