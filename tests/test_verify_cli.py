"""`omnitrace verify`: table, JSON report, JUnit XML and exit status, on timelines read from disk."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from click.testing import CliRunner

from omnitrace.cli import main
from omnitrace.timeline import read_timeline, write_timeline
from omnitrace.verify.cli import verify
from omnitrace.verify.matrix import from_header, header_entry, load_matrix
from tests.harness import matrix_run
from tests.recording import OMNITRACE, QUIET_SOURCES, REPO
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


# -- the matrix a recording was made with (issue 12, class 9) --------------------------------

RENAMED = "mine/kill-the-server"


def renamed_row_matrix(path, base="no-load/sigkill/serve", **changes):
    """A user's matrix: `extends: vllm-omni`, plus a built-in row under a new id."""
    row = load_matrix(None).row(base)
    raw = {"id": RENAMED, "load": row.load, "fault": row.fault, "target": row.target,
           "observe_s": row.observe_s, "rules": row.rules, "thresholds": row.thresholds, **changes}
    path.write_text(yaml.safe_dump({"matrix": "mine", "extends": "vllm-omni", "rows": [raw]}))
    return path


def save_renamed(tmp_path, header_matrix=None, name="renamed.jsonl"):
    """sigkill_serve's recording with its marks naming the renamed row, and a header carrying
    `header_matrix` (a header entry) when given."""
    timeline = sigkill_serve(server()).timeline()
    for event in timeline.events:
        if event.kind == "span" and event.attributes.get("omnitrace.scenario"):
            event.attributes["omnitrace.scenario"] = RENAMED
    header = dict(timeline.header, **({"matrix": header_matrix} if header_matrix else {}))
    path = tmp_path / name
    write_timeline(path, header, timeline.events, {"t": timeline.t_end})
    return str(path)


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_header_s_matrix_is_used_without_the_file(tmp_path):
    mine = renamed_row_matrix(tmp_path / "mine.yaml")
    path = save_renamed(tmp_path, header_entry(load_matrix(mine)))
    mine.unlink()   # verified elsewhere: only the recording travels
    code, out, err = cli("verify", path)
    assert code == 0, out + err
    assert f"{RENAMED}  no-residue" in out and "matrix-row" not in out


def test_a_scenario_without_a_row_is_an_error_not_a_pass(tmp_path):
    mine = renamed_row_matrix(tmp_path / "mine.yaml")
    recorded = save_renamed(tmp_path, header_entry(load_matrix(mine)))
    code, _, err = cli("verify", recorded, "--matrix", "vllm-omni")
    assert code == 2
    assert f"no row in matrix vllm-omni (from --matrix vllm-omni)" in err and RENAMED in err
    unnamed = save_renamed(tmp_path, None, "older.jsonl")   # no matrix in its header
    code, _, err = cli("verify", unnamed)
    assert code == 2 and "the recording names none" in err


def test_an_edited_header_matrix_is_refused(tmp_path):
    entry = header_entry(load_matrix(renamed_row_matrix(tmp_path / "mine.yaml")))
    entry["document"]["rows"][-1]["thresholds"]["residue_s"] = 1000.0
    code, _, err = cli("verify", save_renamed(tmp_path, entry))
    assert code == 2 and ":1: field 'matrix.sha256': does not match the document" in err


def test_record_refuses_a_bad_matrix_before_running_anything(tmp_path):
    out = tmp_path / "never.jsonl"
    code, _, err = cli("record", "--matrix", str(tmp_path / "missing.yaml"), "-o", str(out),
                       "--no-bpf", "--", "true")
    assert code == 2 and "missing.yaml: cannot read" in err and not out.exists()


@pytest.mark.slow
def test_a_row_recorded_with_a_user_matrix_verifies_against_it(tmp_path):
    """`matrix run --matrix mine.yaml` for real on the testbed; then, with mine.yaml gone,
    `verify ROW.jsonl` alone checks the renamed row with the same verdicts as the run."""
    mine = renamed_row_matrix(tmp_path / "mine.yaml", observe_s=8.0)
    run, report = matrix_run(tmp_path / "out", "--matrix", str(mine), "--scenarios", RENAMED)
    assert report is not None, run.stderr
    mine.unlink()
    timeline = tmp_path / "out" / f"{RENAMED.replace('/', '_')}.jsonl"
    assert read_timeline(timeline).header["matrix"]["name"] == "mine"
    code, _, err = cli("verify", str(timeline), "--json", str(tmp_path / "again.json"))
    again = json.loads((tmp_path / "again.json").read_text())
    assert code == run.returncode, err
    (scenario,) = again["scenarios"]
    assert scenario["row"] == RENAMED
    assert {r["id"]: r["verdict"] for r in scenario["rules"]} == {
        r["id"]: r["verdict"] for r in report["scenarios"][0]["rules"]}


def test_record_writes_the_matrix_and_hands_it_to_the_command(tmp_path):
    """The header carries the matrix; the command (a pytest run with the plugin) finds it in
    OMNITRACE_MATRIX and injects by its patterns."""
    mine = renamed_row_matrix(tmp_path / "mine.yaml")
    out, seen = tmp_path / "run.jsonl", tmp_path / "seen.txt"
    show_env = f"import os; open({str(seen)!r}, 'w').write(os.environ['OMNITRACE_MATRIX'])"
    done = subprocess.run(OMNITRACE + ["record", "--matrix", str(mine), "-o", str(out), "--no-bpf",
                                       *QUIET_SOURCES, "--", sys.executable, "-c", show_env],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == str(mine.resolve())
    entry = read_timeline(out).header["matrix"]
    assert entry["name"] == "mine" and entry["sources"] == ["vllm-omni", str(mine)]
    assert from_header(entry, str(out)).row(RENAMED) is not None


@pytest.mark.parametrize("rate, said", [
    (20.0, "health probed at 20 Hz by the recorder; service-unavailable rest on those probes"),
    (0, "health not probed (--health-rate 0); service-unavailable rest on the requests alone"),
    (None, "health probe rate not recorded in the timeline; service-unavailable rest on HTTP")])
def test_the_report_says_how_health_was_watched_and_which_verdicts_rest_on_it(tmp_path, rate,
                                                                               said):
    """The prober can change the server it watches (issue 12, class 8): the table, the JSON and
    the HTML report say its rate and the rules resting on HTTP; the kernel rules are not named."""
    from omnitrace.export.html import render_report
    timeline = sigkill_serve(server()).timeline()
    if rate is not None:
        timeline.header["health_rate_hz"] = rate
    path = tmp_path / "run.jsonl"
    write_timeline(path, timeline.header, timeline.events, {"t": timeline.t_end})
    result = run(str(path), "--json", str(tmp_path / "r.json"))
    assert said in result.output, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["health_rate_hz"] == rate and report["http_rules"] == ["service-unavailable"]
    page = render_report(read_timeline(path), report)
    watched = {20.0: "20 Hz", 0: "off (--health-rate 0)", None: "not recorded"}[rate]
    assert f"<dd>{watched}; resting on HTTP: service-unavailable</dd>" in page
