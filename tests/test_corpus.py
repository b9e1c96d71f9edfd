"""The corpus of real faulty servers (tests/corpus/, docs/corpus.md): on each server, each of its
rows is run twice, once by the ground-truth harness (psutil, pidfds and HTTP from outside, no
omnitrace code) and once by `omnitrace matrix run`; every rule's verdict is compared with the
truth. The bar (issue 12): no false pass, no false fail. The counts are printed at the end of the
module and written to $OMNITRACE_CORPUS_OUT/corpus-counts.json (default: pytest's temp dir).

A mismatch caused by a known verifier defect is listed under the row's `known:` in the manifest,
naming its issue class: the case is then an xfail, strictly (if the mismatch is gone, or a
different one appears, the case fails)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.corpus.compare import FALSE_FAIL, FALSE_PASS, MISSING, Tally, compare
from tests.harness import matrix_run

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"
MATRIX = CORPUS / "matrix.yaml"
SERVERS = yaml.safe_load((CORPUS / "manifest.yaml").read_text())["servers"]
CASES = [(server, row) for server, spec in SERVERS.items() for row in spec["rows"]]


def child_env(tmp_path) -> dict:
    # the servers import tests.corpus from this checkout, whatever the directory pytest runs in
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    return {**os.environ, "PYTHONPATH": path, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu")}


def serve_command(server: str) -> str:
    return SERVERS[server]["serve"].replace("{python}", sys.executable)


def start_truth(server: str, row: str, tmp_path) -> subprocess.Popen:
    """The ground-truth run, in the background: it uses its own server instance and port, so it
    runs beside omnitrace's (halving the corpus's time)."""
    return subprocess.Popen([sys.executable, "-m", "tests.corpus.truth", "--serve",
                             serve_command(server), "--row", row, "--matrix", str(MATRIX),
                             "--out", str(tmp_path / "truth.json")],
                            cwd=REPO, env=child_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish_truth(run: subprocess.Popen, tmp_path) -> dict:
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output[-3000:]
    return json.loads((tmp_path / "truth.json").read_text())


def row_log(run_dir: Path, row: str) -> str:
    """The tail of the row's driver and server log, for a row that gave no verdict."""
    log = run_dir / f"{row.replace('/', '_')}.log"
    return log.read_text()[-2000:] if log.exists() else f"(no {log})"


@pytest.fixture(scope="module")
def tally(request, tmp_path_factory):
    counts = Tally()
    yield counts
    out_dir = Path(os.environ.get("OMNITRACE_CORPUS_OUT") or tmp_path_factory.mktemp("corpus"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "corpus-counts.json").write_text(json.dumps(counts.to_dict(), indent=1))
    text = counts.summary() + f"\n(findings in {out_dir / 'corpus-counts.json'})"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():   # the counts belong on the terminal, even with -q
        print("\n" + text)


def test_manifest_names_only_known_rows_and_rules():
    from tests.corpus import spec
    rows, _ = spec.load(MATRIX)
    for server, row in CASES:
        assert row in rows, f"{server}: no row {row} in {MATRIX}"
        expect = SERVERS[server]["rows"][row]["expect"]
        assert set(expect) == set(rows[row].rules) - {"oom-contract"}, (server, row)


@pytest.mark.slow
@pytest.mark.parametrize("server,row", CASES, ids=[f"{s}:{r}" for s, r in CASES])
def test_omnitrace_verdicts_match_the_ground_truth(server, row, tmp_path, tally):
    case = SERVERS[server]["rows"][row]
    truth_run = start_truth(server, row, tmp_path)
    try:
        cli, report = matrix_run(tmp_path / "run", "--matrix", str(MATRIX), "--serve",
                                 serve_command(server), "--scenarios", row, env=child_env(tmp_path))
    finally:
        truth = finish_truth(truth_run, tmp_path)
    measured = {rule: fact["verdict"] for rule, fact in truth["truth"].items()}
    assert measured == case["expect"], (
        f"the corpus itself: {server} on {row} measured {measured}, the manifest expects "
        f"{case['expect']}: {json.dumps(truth['truth'], indent=1)}")

    findings = compare(server, row, truth["truth"], report)
    tally.findings += findings
    wrong = {f.rule: f for f in findings if f.outcome in (FALSE_PASS, FALSE_FAIL, MISSING)}
    known = case.get("known", {})
    unexpected = [f.line() for rule, f in wrong.items() if rule not in known]
    gone = [f"{rule}: {why} (now {next(f.outcome for f in findings if f.rule == rule)})"
            for rule, why in known.items() if rule not in wrong]
    assert not unexpected and not gone, "\n".join(
        ["mismatches with the ground truth:"] + unexpected +
        ["known mismatches that no longer happen (remove them from the manifest):"] + gone +
        ["omnitrace said:", cli.stdout[-2500:]])
    if known:
        pytest.xfail("; ".join(f"{rule}: {why}" for rule, why in known.items()))
