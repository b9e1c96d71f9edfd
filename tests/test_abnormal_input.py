"""The abnormal-input rows (abnormal-input/*): the four rules on hand-built timelines (window and
"before" edges included), the matrix keys, `omnitrace inject input`, the testbed's answers to each
variant, and `omnitrace matrix run` against the correct testbed and each of its three defects."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from omnitrace.errors import OmnitraceError
from omnitrace.inject.input_variants import VARIANTS, build
from omnitrace.model.synthetic import TimelineBuilder, ns
from omnitrace.testbed.harness import running_testbed
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.matrix import load_matrix
from tests.harness import fails_exactly, matrix_run, record_example_suite
from tests.test_verify_rules import SERVE, server

TESTBED = f"{sys.executable} -m omnitrace.cli testbed serve --port {{port}}"
STAGE = "VLLM::StageEngineCoreProc"
ROW = "abnormal-input/malformed-json"
FAULT, END = 10.0, 14.0
RULES = ("input-rejected", "tree-intact", "health-stays-up", "input-recovery")
MATRIX = load_matrix(None)

# defect -> (row, the rules it must fail, a text the failing evidence must name)
DEFECTS = {
    "500-on-bad-input": ("abnormal-input/malformed-json", {"input-rejected"}, "HTTP 500"),
    "crash-on-bad-input": ("abnormal-input/messages-wrong-type", set(RULES), STAGE),
    "fastapi-error-body": ("abnormal-input/invalid-utf8", {"input-rejected"}, "[invalid-utf8]"),
}


# -- the rules on hand-built timelines ------------------------------------------------------------
def input_row(answer=(0.02, 400, None, True), recovery=(0.05, 0.3, 200, None), end=END,
              health_until=None, keyword_found=None, served_before=True) -> TimelineBuilder:
    """The server of tests.test_verify_rules, a 2xx chat before the fault, health every 0.5 s,
    then the abnormal request at FAULT answered (after s, status, error, OpenAI body) and the
    recovery (starting s after the fault, taking s, status, error); None: not sent.
    served_before=False: nothing was asked before the fault."""
    b = server()
    b.health(3.0 if served_before else FAULT + 0.01, health_until or end, 0.5)
    if served_before:
        b.request(FAULT - 1.0, FAULT - 0.9, "chat", status=200)
    b.mark("scenario", 9.0, end, scenario=ROW, server_pid=SERVE)
    b.mark("input", FAULT, FAULT + 0.05, scenario=ROW, server_pid=SERVE, input_variant="malformed-json")
    if answer is not None:
        took, status, error, openai = answer
        b.request(FAULT + 0.001, None if took is None else FAULT + took, "input", status=status,
                  error=error, openai=openai, attrs={"omnitrace.input.variant": "malformed-json"})
    if recovery is not None:
        start, took, status, error = recovery
        attrs = {} if keyword_found is None else {"omnitrace.response.keyword_found": keyword_found}
        b.request(FAULT + start, None if took is None else FAULT + start + took, "chat",
                  status=status, error=error, attrs=attrs)
    return b


def verdicts(b: TimelineBuilder, matrix=MATRIX, end=None):
    (scenario,) = verify_timeline(b.timeline(end), matrix).scenarios
    assert scenario.fault == "input" and scenario.target == "serve"
    return {r.id: r for r in scenario.rules}


def test_a_correct_server_passes_every_rule_citing_its_before():
    rules = verdicts(input_row())
    assert {k: r.verdict for k, r in rules.items()} == dict.fromkeys(RULES, "pass")
    assert rules["input-rejected"].measured == pytest.approx(0.019, abs=0.002)
    assert rules["input-recovery"].measured == pytest.approx(0.35, abs=0.002)
    assert rules["input-rejected"].evidence[0].text.startswith("before the fault: GET /health")
    assert rules["health-stays-up"].evidence[0].text.startswith("before the fault: /health")
    assert "alive at the fault" in rules["tree-intact"].evidence[0].text


@pytest.mark.parametrize("answer, summary", [
    ((0.02, 500, None, True), "answered 500, not a 4xx"),
    ((0.02, 200, None, None), "answered 200, not a 4xx"),
    ((0.02, None, "reset", None), "the connection was cut"),
    ((0.02, 400, None, False), "without an OpenAI error body"),
    ((11.0, 400, None, True), "answered 400 only after 11.00 s"),
])
def test_input_rejected_fails_anything_but_a_timely_openai_4xx(answer, summary):
    rule = verdicts(input_row(answer=answer, end=25.0))["input-rejected"]
    assert rule.verdict == "fail" and summary in rule.summary, rule.summary
    assert "[malformed-json]" in rule.evidence[0].text


def test_an_unanswered_input_is_a_hang_only_past_its_limit():
    hang = input_row(answer=(None, None, None, None), recovery=None, end=25.0)
    assert verdicts(hang)["input-rejected"].verdict == "fail"
    young = input_row(answer=(None, None, None, None), recovery=None, end=15.0)
    rule = verdicts(young)["input-rejected"]
    assert rule.verdict == "inconclusive" and "before its limit" in rule.summary
    gave_up = input_row(answer=(3.0, None, "timeout", None), end=25.0)
    assert verdicts(gave_up)["input-rejected"].verdict == "inconclusive"


def test_an_answer_after_the_window_is_no_answer():
    """Answered 5xx after the window's end: inside it the request was still open (young)."""
    b = input_row(answer=(6.0, 500, None, True), end=END, health_until=20.0)
    rule = verdicts(b, end=20.0)["input-rejected"]
    assert rule.verdict == "inconclusive", rule.summary


def test_without_a_2xx_before_the_fault_nothing_is_claimed():
    rules = verdicts(input_row(served_before=False))
    for rule_id in ("input-rejected", "health-stays-up", "input-recovery"):
        assert rules[rule_id].verdict == "inconclusive", rule_id
    assert rules["health-stays-up"].summary.startswith("no /health 2xx before")


def test_tree_intact_fails_on_an_exit_in_the_window_only():
    crashed = input_row()
    crashed.exit(102, FAULT + 0.1, code=1)
    rule = verdicts(crashed)["tree-intact"]
    assert rule.verdict == "fail" and rule.measured == 1
    assert rule.evidence[0].pid == 102 and "exited at +0.10 s (status 1)" in rule.evidence[0].text
    later = input_row()
    later.exit(102, END + 1.0, code=1)          # the clean-up's, after the window
    assert verdicts(later, end=END + 2)["tree-intact"].verdict == "pass"
    before = input_row()
    before.exit(103, FAULT - 2.0, code=0)       # gone before the input: not the input's doing
    assert verdicts(before)["tree-intact"].verdict == "pass"


def test_tree_intact_fails_a_process_replacing_its_program():
    from omnitrace.events import Exec
    b = input_row()
    b.add(Exec(ns(FAULT + 0.2), 103, "/usr/bin/python3", 103))
    rule = verdicts(b)["tree-intact"]
    assert rule.verdict == "fail" and "(exec)" in rule.evidence[0].text


def test_tree_intact_needs_the_server_alive_at_the_fault():
    b = input_row()
    b.exit(SERVE, FAULT - 1.0)
    assert verdicts(b)["tree-intact"].verdict == "inconclusive"


def test_tree_intact_rests_on_the_kernel_only():
    b = input_row()
    b.sources.pop("kernel")
    rule = verdicts(b)["tree-intact"]
    assert rule.verdict == "inconclusive" and "kernel" in rule.summary


def test_health_stays_up_fails_one_non_2xx_and_needs_watching_past_the_answer():
    b = input_row()
    b.request(FAULT + 0.2, FAULT + 0.21, "health", status=503)
    rule = verdicts(b)["health-stays-up"]
    assert rule.verdict == "fail" and "503" in rule.evidence[0].text
    unwatched = input_row(answer=(2.0, 400, None, True), health_until=FAULT + 1.0)
    rule = verdicts(unwatched)["health-stays-up"]
    assert rule.verdict == "inconclusive" and "not watched" in rule.summary


@pytest.mark.parametrize("recovery, verdict, summary", [
    ((0.05, 0.3, 503, None), "fail", "failed: HTTP 503"),
    ((0.05, None, None, None), "fail", "past its limit"),           # open past the 30 s limit
    ((0.05, 0.3, None, "refused"), "fail", "failed: error refused"),
    ((0.05, 31.0, 200, None), "fail", "recovered only 31.05 s"),
    (None, "inconclusive", "no valid chat request"),
])
def test_input_recovery(recovery, verdict, summary):
    rule = verdicts(input_row(recovery=recovery, end=FAULT + 35.0))["input-recovery"]
    assert rule.verdict == verdict and summary in rule.summary, rule.summary


def test_input_recovery_still_open_before_its_limit_is_undecided():
    rule = verdicts(input_row(recovery=(0.05, None, None, None), end=20.0))["input-recovery"]
    assert rule.verdict == "inconclusive" and "before its limit" in rule.summary


def keyword_matrix(tmp_path):
    path = tmp_path / "kw.yaml"
    path.write_text(f"extends: vllm-omni\nrows:\n  - {{id: {ROW}, recovery_keyword: fox}}\n")
    return load_matrix(path)


@pytest.mark.parametrize("found, verdict", [(True, "pass"), (False, "fail"), (None, "inconclusive")])
def test_recovery_keyword(tmp_path, found, verdict):
    rule = verdicts(input_row(keyword_found=found), keyword_matrix(tmp_path))["input-recovery"]
    assert rule.verdict == verdict and (found is not True or "'fox'" in rule.summary)


# -- the matrix keys --------------------------------------------------------------------------------
def test_the_builtin_rows_name_their_source_and_thresholds():
    rows = [r for r in MATRIX.rows if r.fault == "input"]
    assert [r.input for r in rows] == list(VARIANTS)
    assert all(r.id == f"abnormal-input/{r.input}" and list(r.rules) == list(RULES) for r in rows)
    assert all("tests/dfx/reliability" in r.source and "beyond the seed" in r.source for r in rows)
    assert {(r.thresholds["input_answer_s"], r.thresholds["input_recovery_s"]) for r in rows} == {(10, 30)}


@pytest.mark.parametrize("row, message", [
    ("{id: x/y, load: false, fault: input, target: serve, observe_s: 5, rules: [tree-intact]}",
     "rows[0].input: fault: input needs `input:` one of malformed-json"),
    ("{id: x/y, load: false, fault: SIGKILL, input: empty-body, target: serve, observe_s: 5, "
     "rules: [tree-intact]}", "rows[0].input: only a `fault: input` row takes this key"),
    (f"{{id: {ROW}, recovery_keyword: 7}}", "rows[0].recovery_keyword: must be a non-empty string"),
])
def test_bad_input_keys_are_one_line_errors_naming_the_line(tmp_path, row, message):
    path = tmp_path / "m.yaml"
    path.write_text(f"extends: vllm-omni\nrows:\n  - {row}\n")
    with pytest.raises(OmnitraceError) as err:
        load_matrix(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


# -- the testbed's answers and `omnitrace inject input` ----------------------------------------
# What real vLLM 0.32 answered (docs/vllm-cpu-run/abnormal-input.md): status, OpenAI body
VLLM_ANSWERS = {"malformed-json": 400, "messages-wrong-type": 400, "unknown-model": 404,
                "empty-body": 400, "wrong-content-type": 400, "invalid-utf8": 400, "oversized": 400}


def ask(url: str, variant: str, model: str) -> httpx.Response:
    bad = build(variant, model)
    return httpx.post(url + bad.path, content=bad.body, headers=bad.headers(), timeout=30)


def test_the_testbed_answers_each_variant_as_vllm_and_each_defect_bends_only_that(tmp_path):
    with running_testbed(["--defect", "fastapi-error-body"], sim_dir=tmp_path / "gpu") as tb:
        model = httpx.get(tb.url + "/v1/models").json()["data"][0]["id"]
        for variant, status in VLLM_ANSWERS.items():
            reply = ask(tb.url, variant, model)
            assert reply.status_code == status, (variant, reply.text)
            shape = "detail" if variant == "invalid-utf8" else "error"   # vLLM's, measured
            assert shape in reply.json(), (variant, reply.text)
        assert httpx.get(tb.url + "/health").status_code == 200


def omnitrace(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrace.cli", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("args, error", [
    (["--variant", "nope", "--url", "http://127.0.0.1:1"], "--variant 'nope': unknown; one of"),
    (["--variant", "empty-body", "--url", "127.0.0.1:1"], "--url '127.0.0.1:1': give the server"),
    (["--variant", "empty-body", "--url", "http://127.0.0.1:1"], "connection refused"),
])
def test_inject_input_bad_options_are_one_line_errors(args, error):
    cli = omnitrace("inject", "input", *args)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith("omnitrace: error: ") and error in cli.stderr, cli.stderr


def test_inject_input_against_the_testbed(tmp_path):
    with running_testbed(["--defect", "500-on-bad-input"], sim_dir=tmp_path / "gpu") as tb:
        ok = omnitrace("inject", "input", "--variant", "unknown-model", "--url", tb.url,
                       "--model", "Qwen/Qwen3-Omni-30B-A3B-Instruct", "--keyword", "fox")
        bad = omnitrace("inject", "input", "--variant", "empty-body", "--url", tb.url)
    # the defect answers 500 to every bad input, 404 included
    assert bad.returncode == 1 and bad.stdout.startswith("empty-body: HTTP 500"), bad.stdout
    assert ok.returncode == 1 and "unknown-model: HTTP 500" in ok.stdout, ok.stdout
    assert "recovery: HTTP 200" in ok.stdout and "keyword 'fox' found" in ok.stdout, ok.stdout


# -- `omnitrace matrix run` against the testbed ----------------------------------------------------
def run_rows(tmp_path, serve: str, scenarios: str):
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu")}
    cli, report = matrix_run(tmp_path / "run", "--serve", serve, "--scenarios", scenarios, env=env)
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-3000:]
    return cli, report


@pytest.mark.slow
@pytest.mark.timeout(600)   # 7 rows: 94 s with both cores busy (a guard, not a bound)
def test_the_correct_testbed_passes_every_abnormal_input_row(tmp_path):
    cli, report = run_rows(tmp_path, TESTBED, "abnormal-input/*")
    assert sorted(s["id"] for s in report["scenarios"]) == sorted(f"abnormal-input/{v}" for v in VARIANTS)
    verdicts_ = {(s["id"], r["id"]): r["verdict"] for s in report["scenarios"] for r in s["rules"]}
    assert set(verdicts_.values()) == {"pass"} and cli.returncode == 0, cli.stdout[-4000:]
    assert "leftover" not in cli.stdout


@pytest.mark.slow
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_fails_exactly_its_rules(tmp_path, defect):
    row, expected, named = DEFECTS[defect]
    cli, report = run_rows(tmp_path, f"{TESTBED} --defect {defect}", row)
    scenario, failed = fails_exactly(cli, report, expected, f"{defect} on {row}")
    assert all(r["verdict"] == "pass" for r in scenario["rules"] if r["id"] not in expected)
    texts = " ".join(e["text"] for r in failed.values() for e in r["evidence"])
    assert named in texts, texts


# -- the pytest plugin ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_example_suites_input_row_under_record_verifies(tmp_path):
    recorded, timeline, env = record_example_suite(tmp_path, "abnormal-input/oversized")
    assert recorded.returncode == 0 and "1 passed" in recorded.stdout, recorded.stdout[-3000:]
    verified = omnitrace("verify", str(timeline), "--json", "-", env=env)
    (scenario,) = json.loads(verified.stdout)["scenarios"]
    assert (scenario["id"], scenario["origin"], scenario["fault"]) == (
        "abnormal-input/oversized", "marks", "input")
    assert {r["id"]: r["verdict"] for r in scenario["rules"]} == dict.fromkeys(RULES, "pass")
    assert verified.returncode == 0


def test_tree_intact_names_a_replacement_beside_the_exit_it_replaced():
    b = input_row()
    b.exit(102, FAULT + 0.1, code=1)
    b.spawn(105, SERVE, STAGE + "_noid_replica0_DP0", FAULT + 0.3)
    rule = verdicts(b)["tree-intact"]
    assert rule.verdict == "fail" and rule.measured == 1
    assert [e.pid for e in rule.evidence] == [102, 105] and "forked at +0.30 s" in rule.evidence[1].text


def test_the_evidence_shows_the_refusals_body():
    b = input_row(answer=(0.02, 400, None, False))
    (bad,) = [e for e in b.events if getattr(e, "attributes", {}).get("omnitrace.request.kind")
              == "input"]
    bad.attributes["omnitrace.response.body_head"] = '{"detail":"There was an error"}'
    rule = verdicts(b)["input-rejected"]
    assert rule.verdict == "fail"
    assert rule.evidence[0].text.endswith('HTTP 400 after 0.019 s, body \'{"detail":"There was an error"}\'')


SLOW_RECOVERY_APP = '''\
import http.server, json, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        self.answer(200, {"data": [{"id": "m"}]} if self.path == "/v1/models" else {})
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            json.loads(raw)
        except ValueError:
            return self.answer(400, {"error": {"message": "bad JSON", "type": "BadRequestError"}})
        time.sleep(float(sys.argv[2]))   # the server's slow answer to the valid request
        self.answer(200, {"choices": [{"message": {"role": "assistant", "content": "hi"}}]})
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_an_input_row_is_not_settled_before_its_recovery_is_answered(tmp_path):
    """The window must stay open until the recovery request is answered: input-recovery needs
    that answer. A server that takes longer than the driver's settle grace to answer it must
    still be seen answering (a merge once let such rows settle at once; seen on a busy machine,
    where the testbed's recovery took over a second)."""
    from omnitrace.inject.scenario import SETTLE_GRACE_S, Driver, Plan
    from omnitrace.inject.server import free_port
    app = tmp_path / "slow_recovery.py"
    app.write_text(SLOW_RECOVERY_APP)
    port = free_port()
    delay = SETTLE_GRACE_S + 1.5
    plan = Plan(row="abnormal-input/malformed-json", fault="input", target="serve", load=False,
                observe_s=30, serve=f"{sys.executable} {app} {{port}} {delay}", port=port,
                url=f"http://127.0.0.1:{port}", input="malformed-json", input_recovery_s=30)
    outcome = Driver(plan).run()
    assert outcome.error is None and outcome.settled, outcome
    assert [p.split(":")[:2] for p in outcome.probes] == [["input", "400"], ["chat", "200"]], \
        outcome.probes
