"""The pytest plugin: the example suite runs under `omnitrace record` and verifies with no flags."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import record_example_suite

ROWS = "no-load/sigkill/serve or under-load/sigkill/worker or oom/gpu-hog"


@pytest.mark.slow
def test_example_suite_under_record_verifies(tmp_path):
    recorded, timeline, env = record_example_suite(tmp_path, ROWS)
    assert recorded.returncode == 0, recorded.stdout[-3000:] + recorded.stderr[-3000:]
    assert "3 passed" in recorded.stdout
    verified = subprocess.run([sys.executable, "-m", "omnitrace.cli", "verify", str(timeline),
                               "--json", "-"], env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(verified.stdout)
    ids = sorted(s["id"] for s in report["scenarios"])
    assert ids == ["no-load/sigkill/serve", "oom/gpu-hog", "under-load/sigkill/worker"]
    assert all(s["origin"] == "marks" for s in report["scenarios"])
    failed = [(s["id"], r["id"], r["summary"]) for s in report["scenarios"] for r in s["rules"]
              if r["verdict"] == "fail"]
    assert not failed
    assert verified.returncode == 0


def test_fixtures_stop_the_server_and_mark_the_window(tmp_path):
    """A test that leaves its server running: teardown must stop the whole tree."""
    (tmp_path / "test_leave.py").write_text(
        "import pytest\n"
        "@pytest.mark.omnitrace(row='no-load/sigkill/worker')\n"
        "def test_leave(omnitrace_server):\n"
        "    open('pids', 'w').write(' '.join(map(str, omnitrace_server.tree_pids())))\n"
        "    assert omnitrace_server.health() == 200\n")
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu"), "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_leave.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) >= 4  # the API server and its three stages at least
    from omnitrace.testbed.harness import is_gone
    alive = [p for p in pids if not is_gone(p)]
    assert not alive
