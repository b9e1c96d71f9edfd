"""Every testbed defect, recorded for real and verified: it fails exactly the rules that name the
behaviour it breaks, on the row that exercises it, with evidence naming the right process; the
correct testbed passes the same tightened matrix.

The matrix is the built-in one with short windows and limits (tests/data/short-windows.yaml, a
user override file), so a defect shows within seconds instead of the upstream 30-130 s.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from omnitrace.testbed import config as testbed_config
from tests.harness import fails_exactly, matrix_run
from tests.test_abnormal_input import DEFECTS as INPUT_DEFECTS

SHORT = Path(__file__).parent / "data" / "short-windows.yaml"
TESTBED = f"{sys.executable} -m omnitrace.cli testbed serve --port {{port}}"
STAGE = "VLLM::StageEngineCoreProc"

# defect -> (row, the rules it must fail, a text the failing evidence must name)
DEFECTS = {
    "orphan-stages": ("no-load/sigkill/serve", {"cleanup-order", "no-residue", "gpu-released"}, STAGE),
    "slow-release": ("no-load/sigkill/serve", {"gpu-released"}, STAGE),
    # #3683: uvicorn waits for the hung connections, so the server never exits either
    "hang-inflight": ("under-load/sigterm/serve",
                      {"target-exits", "graceful-shutdown", "no-residue", "inflight-fail-fast"},
                      "chat"),
    "exit-on-oom": ("oom/gpu-hog", {"oom-contract"}, "exited at"),
    "healthy-under-oom": ("oom/gpu-hog", {"oom-contract"}, "200"),
    "speech-400-under-oom": ("oom/gpu-hog", {"oom-contract"}, "400"),
    # the ignoring stage stays up, so the server rightly stays healthy: the row fails as a whole
    "ignore-sigterm": ("no-load/sigterm/worker",
                       {"target-exits", "graceful-shutdown", "service-unavailable"}, STAGE),
    "zombie-stage": ("no-load/sigkill/worker", {"no-zombies"}, STAGE),
    "stale-health": ("no-load/sigkill/worker", {"service-unavailable"}, "HTTP 200"),
    "hang-on-stage-death": ("under-load/sigkill/worker", {"inflight-fail-fast"}, "chat"),
    # the orphaned stage 0 keeps 85 % of GPU 0: supervisord's restarts fail at start-up (FATAL)
    # and first-request-recovers has no recovery to judge (inconclusive)
    "orphan-keeps-device": ("recovery/sigkill/serve", {"old-incarnation-gone", "recovers-within"},
                            STAGE),
}


def short_matrix_run(tmp_path, serve: str, scenarios: str):
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu")}
    cli, report = matrix_run(tmp_path / "run", "--matrix", str(SHORT), "--serve", serve,
                             "--scenarios", scenarios, env=env)
    assert report is not None, cli.stdout[-3000:] + cli.stderr[-3000:]
    return cli, report


def test_every_defect_is_covered():
    # `testbed defects` lists config.DEFECTS (tests/test_testbed_defects.py checks the listing)
    assert set(DEFECTS) | set(INPUT_DEFECTS) == set(testbed_config.DEFECTS)


@pytest.mark.slow
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_fails_exactly_the_rules_it_breaks(tmp_path, defect):
    row, expected, named = DEFECTS[defect]
    cli, report = short_matrix_run(tmp_path, f"{TESTBED} --defect {defect}", row)
    _, failed = fails_exactly(cli, report, expected, f"{defect} on {row}")
    for rule in failed.values():
        assert rule["evidence"], f"{rule['id']} failed without evidence"
    texts = " ".join(e["text"] for r in failed.values() for e in r["evidence"])
    assert named in texts, texts
    if defect == "orphan-stages":  # the runner reported the survivors and killed them
        assert "leftover process" in cli.stdout and STAGE in cli.stdout, cli.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(1200)   # 15 rows: over 300 s with both cores busy (a guard, not a bound)
def test_the_correct_testbed_passes_the_tightened_matrix(tmp_path):
    # the seed rows: abnormal-input/* and its defects are tests/test_abnormal_input.py's
    cli, report = short_matrix_run(tmp_path, TESTBED, "no-load/*,under-load/*,oom/*")
    assert len(report["scenarios"]) == 15
    failed = [(s["id"], r["id"]) for s in report["scenarios"] for r in s["rules"] if r["verdict"] == "fail"]
    assert not failed and cli.returncode == 0, cli.stdout[-4000:]
