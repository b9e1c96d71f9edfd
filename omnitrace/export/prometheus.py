"""Verdict metrics from `omnitrace verify`: a node_exporter textfile, or a push to a Pushgateway.

Input is verify's report as its documented JSON dict (docs/verify.md), or any object with
`to_dict()` giving it. Every series carries run_id, row, scenario, signal and target, so one
Prometheus holds many runs side by side and dashboards/run-overview.json can pick one or trend them.

Verdicts are a Prometheus "state set": one series per possible verdict, 1 for the actual one, so a
grid panel can filter `== 1` and an alert can match `verdict="fail"` without decoding numbers.
"""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from omnitrace.errors import OmnitraceError

VERDICTS = ("pass", "fail", "inconclusive", "skipped")
SCENARIO_LABELS = ("run_id", "row", "scenario", "signal", "target")
JOB = "omnitrace"

# Seconds and bytes are Prometheus base units; the report may say ms, MiB and the like.
_TO_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "seconds": 1.0,
               "second": 1.0, "min": 60.0}
_TO_BYTES = {"B": 1, "bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

# The figures the run-overview dashboard plots, by verify's rule id (omnitrace/verify/rules/).
# Latencies are the rule's measured seconds. Counts are the processes or requests the rule failed
# on: verify cites exactly those as evidence (one item each), and a passing rule has none.
LATENCIES = {
    "target-exits": ("omnitrace_exit_latency_seconds",
                     "Seconds from the fault until the processes it hit had exited"),
    "gpu-released": ("omnitrace_gpu_release_latency_seconds",
                     "Seconds from the fault until GPU memory was back to the baseline"),
}
COUNTS = {
    "no-residue": ("omnitrace_orphan_processes",
                   "Processes of the server's tree still alive after the limit"),
    "inflight-fail-fast": ("omnitrace_hung_requests",
                           "Requests in flight at the fault that did not fail fast (hung or answered)"),
}


def export_verdicts(report: Any, textfile: str | None = None, pushgateway: str | None = None,
                    header: dict[str, Any] | None = None, run_id: str | None = None) -> CollectorRegistry:
    """Write verify's report as metrics to `textfile` and/or push it to `pushgateway`.
    `header` (the timeline's) names the run and dates it when `run_id` is not given."""
    data = report.to_dict() if hasattr(report, "to_dict") else report
    header = header or {}
    run = str(run_id or data.get("run_id") or run_id_of(header))
    registry = verdict_registry(data, run, _started_unix(header))
    if textfile:
        try:
            write_to_textfile(textfile, registry)  # writes a temp file and renames: atomic
        except OSError as exc:
            raise OmnitraceError(f"--prometheus-textfile {textfile}: cannot write ({exc.strerror})") from None
    if pushgateway:
        try:
            # One group per run, so earlier runs stay on the gateway for the trend panels.
            push_to_gateway(pushgateway, job=JOB, registry=registry, grouping_key={"run_id": run},
                            timeout=10)
        except OSError as exc:
            raise OmnitraceError(f"--pushgateway {pushgateway}: push failed ({exc})") from None
    return registry


def run_id_of(header: dict[str, Any]) -> str:
    """The header's run_id, else host and start time: stable for one recording, distinct across."""
    if header.get("run_id"):
        return str(header["run_id"])
    started = _started_unix(header)
    if started is None:
        return "unknown"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    return f"{header.get('host', 'host')}-{stamp}"


def verdict_registry(data: dict[str, Any], run_id: str, started_unix: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    scenario_verdict = Gauge("omnitrace_scenario_verdict", "1 for the scenario's verdict",
                             [*SCENARIO_LABELS, "verdict"], registry=registry)
    rule_verdict = Gauge("omnitrace_rule_verdict", "1 for the rule's verdict",
                         [*SCENARIO_LABELS, "rule", "verdict"], registry=registry)
    measured_s = Gauge("omnitrace_rule_measured_seconds", "A rule's measured time",
                       [*SCENARIO_LABELS, "rule"], registry=registry)
    threshold_s = Gauge("omnitrace_rule_threshold_seconds", "A rule's time limit",
                        [*SCENARIO_LABELS, "rule"], registry=registry)
    measured = Gauge("omnitrace_rule_measured", "A rule's measured figure (not a time)",
                     [*SCENARIO_LABELS, "rule", "unit"], registry=registry)
    threshold = Gauge("omnitrace_rule_threshold", "A rule's limit (not a time)",
                      [*SCENARIO_LABELS, "rule", "unit"], registry=registry)
    named = {rule: Gauge(name, doc, [*SCENARIO_LABELS, "rule"], registry=registry)
             for rule, (name, doc) in {**LATENCIES, **COUNTS}.items()}
    run_scenarios = Gauge("omnitrace_run_scenarios", "Scenarios of the run by verdict",
                          ["run_id", "verdict"], registry=registry)
    run_time = Gauge("omnitrace_run_timestamp_seconds", "When the run was recorded (Unix time)",
                     ["run_id"], registry=registry)

    counts = dict.fromkeys(VERDICTS, 0)
    for scenario in data.get("scenarios", []):
        labels = _scenario_labels(scenario, run_id)
        verdict = str(scenario.get("verdict") or _worst(r.get("verdict") for r in scenario.get("rules", [])))
        counts[verdict] = counts.get(verdict, 0) + 1
        _state_set(scenario_verdict, labels, verdict)
        for rule in scenario.get("rules", []):
            rule_labels = {**labels, "rule": str(rule.get("id", ""))}
            _state_set(rule_verdict, rule_labels, str(rule.get("verdict", "inconclusive")))
            _figure(rule, rule_labels, measured_s, threshold_s, measured, threshold, named)
    for verdict, count in counts.items():
        run_scenarios.labels(run_id, verdict).set(count)
    if started_unix is not None:
        run_time.labels(run_id).set(started_unix)
    return registry


def _scenario_labels(scenario: dict[str, Any], run_id: str) -> dict[str, str]:
    sid = str(scenario.get("id", ""))
    return {"run_id": run_id, "row": str(scenario.get("row") or sid), "scenario": sid,
            # verify's report names the fault ("SIGKILL", "oom"); older drafts said "signal"
            "signal": str(scenario.get("signal") or scenario.get("fault") or ""),
            "target": str(scenario.get("target") or "")}


def _state_set(gauge: Gauge, labels: dict[str, str], actual: str) -> None:
    for verdict in dict.fromkeys((*VERDICTS, actual)):
        gauge.labels(**labels, verdict=verdict).set(1 if verdict == actual else 0)


def _worst(verdicts) -> str:
    seen = set(verdicts)
    for verdict in ("fail", "inconclusive", "pass"):
        if verdict in seen:
            return verdict
    return "inconclusive"


def _figure(rule, labels, measured_s, threshold_s, measured, threshold, named) -> None:
    if labels["rule"] in COUNTS and rule.get("verdict") in ("pass", "fail"):
        failed_on = len(rule.get("evidence") or []) if rule["verdict"] == "fail" else 0
        named[labels["rule"]].labels(**labels).set(failed_on)
    value, limit, unit = rule.get("measured"), rule.get("threshold"), str(rule.get("unit") or "")
    if unit in _TO_SECONDS:
        scale, time_like = _TO_SECONDS[unit], True
    else:
        scale, time_like = _TO_BYTES.get(unit, 1), False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if time_like:
            measured_s.labels(**labels).set(value * scale)
        else:
            measured.labels(**labels, unit=_base_unit(unit)).set(value * scale)
        if labels["rule"] in LATENCIES and time_like:
            named[labels["rule"]].labels(**labels).set(value * scale)
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        if time_like:
            threshold_s.labels(**labels).set(limit * scale)
        else:
            threshold.labels(**labels, unit=_base_unit(unit)).set(limit * scale)


def _base_unit(unit: str) -> str:
    return "bytes" if unit in _TO_BYTES else unit


def _started_unix(header: dict[str, Any]) -> float | None:
    if "t0" in header and "wall_offset_ns" in header:
        return (header["t0"] + header["wall_offset_ns"]) / 1e9
    return None
