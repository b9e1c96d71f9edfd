"""The HTML report and the Perfetto trace of a real recording: `omnitrace record` (BPF) of
`omnitrace testbed serve` (simulated GPU) while a stage engine is SIGKILLed, then the server
SIGTERMed. Needs root for BPF."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from omnitrace.cli import main
from omnitrace.gpu import sim
from tests.recording import OMNITRACE, REPO, kill_session
from tests.test_report_html import chromium

READY = re.compile(r"READY (\S+) pid=(\d+) stages=([\d,]+)")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="BPF recording needs root")]


@pytest.fixture(scope="module")
def real_recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    out = tmp / "run.jsonl"
    env = {**os.environ, sim.ENV_VAR: str(sim.ensure_device(tmp / "gpu")), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(OMNITRACE + ["record", "-o", str(out), "--gpu", "sim", "--no-otlp",
                                         "--", *OMNITRACE, "testbed", "serve", "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if m := READY.match(line):
                break
            assert time.monotonic() < deadline, "testbed never became ready"
        else:
            pytest.fail("recording ended before the testbed was ready")
        root, stages = int(m.group(2)), [int(p) for p in m.group(3).split(",")]
        time.sleep(1.0)
        os.kill(stages[0], signal.SIGKILL)
        time.sleep(1.5)
        os.kill(root, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_session(proc)
    return out, root, stages


def test_report_of_a_real_recording_draws_the_killed_stage(real_recording, tmp_path):
    out, root, stages = real_recording
    page = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(page)]) == 0
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert '<section class="scenario"' in dom
    assert re.search(rf">{stages[0]} [^<]*<", dom), "the killed stage has no lifeline"
    assert "SIGKILL from pid" in dom
    shot = tmp_path / "real.png"
    chromium(tmp_path, "--window-size=1200,1000", f"--screenshot={shot}", page.as_uri())
    assert shot.stat().st_size > 20_000


def test_perfetto_of_a_real_recording_has_the_server_tree(real_recording, tmp_path):
    out, root, stages = real_recording
    trace_path = tmp_path / "trace.json"
    assert main(["export", "perfetto", str(out), "-o", str(trace_path)]) == 0
    events = json.loads(trace_path.read_text())["traceEvents"]
    lifetimes = {e["pid"]: e for e in events if e.get("cat") == "process"}
    assert root in lifetimes and set(stages) <= set(lifetimes)
    assert lifetimes[stages[0]]["args"]["signal"] == "SIGKILL"
    assert any(e["ph"] == "i" and e["pid"] == stages[0] and e["name"] == "SIGKILL sent"
               for e in events)
    assert any(e["ph"] == "C" for e in events), "no GPU memory counter"
