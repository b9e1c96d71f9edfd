"""`omnitrace verify`: table, JSON report, JUnit XML and exit status, on timelines read from disk."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from click.testing import CliRunner

from omnitrace.timeline import write_timeline
from omnitrace.verify.cli import verify
from tests.test_verify_rules import server, sigkill_serve, sigterm_serve


def save(tmp_path, builder, name="run.jsonl"):
    timeline = builder.timeline()
    path = tmp_path / name
    write_timeline(path, timeline.header, timeline.events, {"t": timeline.t_end})
    return str(path)


def run(*args):
    return CliRunner().invoke(verify, list(args))


def test_all_pass_exits_0_and_prints_the_table(tmp_path):
    result = run(save(tmp_path, sigkill_serve(server())))
    assert result.exit_code == 0, result.output
    assert "no-load/sigkill/serve  no-residue" in result.output
    assert "6 passed, 0 failed, 0 inconclusive" in result.output


def test_a_failure_exits_1_and_shows_its_evidence(tmp_path):
    result = run(save(tmp_path, sigkill_serve(server(), orphan=True)))
    assert result.exit_code == 1
    assert "FAIL  no-load/sigkill/serve / no-residue" in result.output
    assert "pid 102 VLLM::StageEngineCoreProc_noid_replica0_DP0 re-parented to 1" in result.output


def test_the_fault_is_placed_in_the_recording_and_evidence_is_timed_from_it(tmp_path):
    """'+N s' in evidence is always from the fault: the fault's own time reads otherwise."""
    result = run(save(tmp_path, sigkill_serve(server(), orphan=True)))
    assert "(SIGKILL to serve 10.000 s into the recording, server pid 100)" in result.output
    assert "still alive at scenario end +35.00 s" in result.output
    assert "at +10.000 s" not in result.output


def test_inconclusive_passes_unless_strict(tmp_path):
    path = save(tmp_path, sigkill_serve(server(sources=("kernel", "procfs", "http"))))
    assert run(path).exit_code == 0
    assert run(path, "--strict").exit_code == 1


def test_json_report_follows_the_documented_schema(tmp_path):
    out = tmp_path / "report.json"
    run(save(tmp_path, sigkill_serve(server(), orphan=True)), "--json", str(out))
    report = json.loads(out.read_text())
    assert report["format"] == "omnitrace-verify" and report["summary"]["fail"] == 3
    (scenario,) = report["scenarios"]
    assert (scenario["id"], scenario["row"], scenario["verdict"]) == (
        "no-load/sigkill/serve", "no-load/sigkill/serve", "fail")
    residue = next(r for r in scenario["rules"] if r["id"] == "no-residue")
    assert set(residue) >= {"id", "verdict", "measured", "threshold", "unit", "evidence"}
    assert residue["threshold"] == 30 and residue["unit"] == "s"
    assert residue["evidence"][0]["pid"] == 102 and isinstance(residue["evidence"][0]["event"], int)


def test_junit_has_one_testcase_per_scenario_and_rule(tmp_path):
    out = tmp_path / "junit.xml"
    run(save(tmp_path, sigterm_serve(server(), workers_after=True)), "--junit", str(out))
    suite = ET.parse(out).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 8
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["cleanup-order"]


def test_scenario_glob_selects_scenarios(tmp_path):
    result = run(save(tmp_path, sigkill_serve(server())), "--scenario", "under-load/*")
    assert "0 passed, 0 failed, 0 inconclusive in 0 scenario(s)" in result.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    from omnitrace.cli import main
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["verify", str(bad)]) == 2
    assert main(["verify", save(tmp_path, sigkill_serve(server())), "--matrix",
                 str(tmp_path / "missing.yaml")]) == 2
