"""Check a timeline against a matrix: scenarios x rules -> Report.

    report = verify_timeline(timeline, load_matrix(None), scenario_glob="under-load/*")
    sys.exit(report.exit_code(strict=False))

Rules read the scenario's window (omnitrace/model/window.py): the recording cut at the window's
end, so nothing after it (the runner's clean-up) decides a verdict. Before a rule runs, the engine
makes its verdict inconclusive when the scenario lacks what every rule needs (a fault time, a
server), when a source the rule rests on did not run, when events of such a source were lost
inside the scenario's window, or when the state the rule claims changes (its `before`) was not
seen before the fault.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from omnitrace.model.build import build_model
from omnitrace.model.model import Model
from omnitrace.model.scenarios import Scenario, find_scenarios
from omnitrace.model.window import Window
from omnitrace.timeline import Timeline
from omnitrace.verify.matrix import Matrix, Row
from omnitrace.verify.report import Report, RuleVerdict, ScenarioReport
from omnitrace.verify.rules import RULES
from omnitrace.verify.rules.base import INCONCLUSIVE, PASS, Context, Result, Rule


def verify_timeline(timeline: Timeline, matrix: Matrix, scenario_glob: str | None = None) -> Report:
    model = build_model(timeline)
    scenarios = find_scenarios(model, matrix.patterns, matrix.observe_s)
    if scenario_glob:
        scenarios = [s for s in scenarios if fnmatchcase(s.id, scenario_glob)]
    warnings = list(timeline.warnings)
    if not scenarios:
        warnings.append("no scenario found: no marks, and no fatal signal or OOM hog hit a server")
    reports = [_check_scenario(model, matrix, s) for s in scenarios]
    rate = timeline.header.get("health_rate_hz")
    return Report(timeline.path, matrix.name, reports, warnings, t0=model.t0,
                  health_rate_hz=float(rate) if isinstance(rate, (int, float)) else None)


def _check_scenario(model: Model, matrix: Matrix, scenario: Scenario) -> ScenarioReport:
    row = matrix.row(scenario.id)
    t0 = model.t0
    report = ScenarioReport(
        id=scenario.id, row=row.id if row else None, origin=scenario.origin,
        start_s=round((scenario.start - t0) / 1e9, 6), end_s=round((scenario.end - t0) / 1e9, 6),
        fault_s=None if scenario.fault_t is None else round((scenario.fault_t - t0) / 1e9, 6),
        fault=scenario.fault, target=scenario.target, target_pids=scenario.target_pids,
        server_pid=scenario.server.pid if scenario.server else None)
    if row is None:
        report.rules.append(RuleVerdict("matrix-row", "the scenario has a row in the matrix",
                                        INCONCLUSIVE, None, None, "", f"no row {scenario.id!r} in "
                                        f"matrix {matrix.name}: nothing to check it against", []))
        return report
    ctx = Context(Window(model, scenario), row.thresholds,   # every rule decides from the window
                  {"recovery_keyword": row.recovery_keyword})
    for rule_id in row.rules:
        rule = RULES[rule_id]
        result = _precheck(model, scenario, rule) or _check(ctx, rule)
        report.rules.append(_verdict(rule, row, result))
    return report


def _check(ctx: Context, rule: Rule) -> Result:
    """The rule's verdict, once what it claims changes was seen before the fault; a pass cites
    that "before" first."""
    seen = []
    for before in rule.before:
        evidence = before(ctx)
        if isinstance(evidence, str):
            return Result(INCONCLUSIVE, summary=evidence)
        seen.append(evidence)
    result = rule.check(ctx)
    if result.verdict == PASS:
        result.evidence = seen + result.evidence
    return result


def _precheck(model: Model, scenario: Scenario, rule: Rule) -> Result | None:
    if scenario.fault_t is None:
        return Result(INCONCLUSIVE, summary="the scenario's marks name no fault (no fault mark)")
    if scenario.server is None or scenario.roles is None:
        return Result(INCONCLUSIVE, summary="no serve process found for this scenario")
    for alternatives in rule.sources:
        if not any(model.source_ran(name) for name in alternatives):
            return Result(INCONCLUSIVE, summary=f"needs the {' or '.join(alternatives)} source, "
                          "which did not run in this recording")
    used = [name for alternatives in rule.sources for name in alternatives]
    lost = model.lost_in(scenario.start, scenario.end, used)
    if lost:
        return Result(INCONCLUSIVE, summary=f"{lost} {'/'.join(used)} events lost in the "
                      "scenario's window")
    return None


def _verdict(rule: Rule, row: Row, result: Result) -> RuleVerdict:
    threshold = result.threshold
    if threshold is None and rule.thresholds:   # a rule may hold for the whole window, no limit
        threshold = row.thresholds.get(rule.thresholds[0])
    measured = None if result.measured is None else round(result.measured, 6)
    return RuleVerdict(rule.id, rule.title, result.verdict, measured, threshold, result.unit,
                       result.summary, result.evidence)
