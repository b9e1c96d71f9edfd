"""Each defect changes the behaviour it names, and the neighbouring behaviour stays correct."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from omnitrace.gpu import sim
from omnitrace.testbed.config import DEFECTS
from omnitrace.testbed.harness import StreamingChat, is_gone, running_testbed, wait_until
from tests.test_testbed import chat, device_used, hog_factory, status  # noqa: F401 (fixture)


def defect(name: str):
    return running_testbed(["--defect", name])


def metrics(tb) -> str:
    return httpx.get(f"{tb.url}/metrics", timeout=5).text


def assert_serves(tb) -> None:
    assert status(tb.url) == 200
    assert chat(tb.url).status_code == 200


def test_defects_are_listed_one_line_each():
    out = subprocess.run([sys.executable, "-m", "omnitrace.cli", "testbed", "defects"],
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert [line.split()[0] for line in out] == list(DEFECTS)


def test_unknown_defect_is_a_one_line_error():
    r = subprocess.run([sys.executable, "-m", "omnitrace.cli", "testbed", "serve", "--defect",
                        "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr


def test_orphan_stages_outlive_a_sigkilled_server():
    with defect("orphan-stages") as tb:
        assert_serves(tb)
        os.kill(tb.pid, signal.SIGKILL)
        time.sleep(2)
        assert all(psutil.Process(pid).is_running() and not is_gone(pid) for pid in tb.stage_pids)
        assert device_used(tb) == 6 << 30
    with defect("orphan-stages") as tb:          # the graceful path still cleans up
        tree = tb.tree_pids()
        os.kill(tb.pid, signal.SIGTERM)
        assert wait_until(lambda: all(is_gone(pid) for pid in tree), 5) is not None


def test_slow_release_holds_memory_seconds_after_exit():
    with defect("slow-release") as tb:
        assert_serves(tb)
        tree = tb.tree_pids()
        os.kill(tb.pid, signal.SIGTERM)
        assert wait_until(lambda: all(is_gone(pid) for pid in tree), 5) is not None  # exits as usual
        exited = time.monotonic()
        gpu = sim.SimGpu(tb.sim_dir)
        while time.monotonic() - exited < 1.0:
            assert device_used(tb) == 6 << 30
            assert set(gpu.processes(1)) == set(tb.stage_pids[1:])
            time.sleep(0.05)
        released = wait_until(lambda: device_used(tb) == 0, 10)
        assert released is not None and 2.0 < 1.0 + released < 7.0


def test_hang_inflight_keeps_the_server_waiting_for_connections():
    with defect("hang-inflight") as tb:
        assert_serves(tb)
        s = StreamingChat(tb.url)
        assert s.wait_tokens(2)
        os.kill(tb.pid, signal.SIGTERM)
        assert wait_until(lambda: all(is_gone(p) for p in tb.stage_pids), 5) is not None
        time.sleep(2)
        assert tb.proc.poll() is None and s.outcome is None
        assert "Waiting for connections to close" in tb.log()
    with defect("hang-inflight") as tb:          # without load it shuts down as usual
        os.kill(tb.pid, signal.SIGTERM)
        assert tb.proc.wait(10) == -signal.SIGTERM


def test_exit_on_oom_takes_the_whole_server_down(hog_factory):
    with defect("exit-on-oom") as tb:
        assert_serves(tb)
        s = StreamingChat(tb.url)
        assert s.wait_tokens(2)
        tree = tb.tree_pids()
        hog_factory(tb)
        s.join(5)
        # the stage's error event may reach the client before the server exits, or not
        assert s.outcome in ("error-event", "RemoteProtocolError")
        assert tb.proc.wait(10) == 1
        assert wait_until(lambda: all(is_gone(pid) for pid in tree), 5) is not None
    with defect("exit-on-oom") as tb:            # a stage killed otherwise: the server stays
        os.kill(tb.stage_pids[2], signal.SIGKILL)
        assert wait_until(lambda: status(tb.url) == 503, 2) is not None
        time.sleep(0.5)
        assert tb.proc.poll() is None


def test_healthy_under_oom_answers_200(hog_factory):
    with defect("healthy-under-oom") as tb:
        hog = hog_factory(tb)
        assert wait_until(lambda: "testbed_engine_oom 1.0" in metrics(tb), 2) is not None
        assert status(tb.url) == 200
        r = chat(tb.url)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ""
        hog.kill()
        hog.wait()
        os.kill(tb.stage_pids[0], signal.SIGKILL)  # a dead stage still shows
        assert wait_until(lambda: status(tb.url) == 503, 2) is not None


def test_speech_400_under_oom(hog_factory):
    with defect("speech-400-under-oom") as tb:
        hog_factory(tb)
        assert wait_until(lambda: status(tb.url) == 503, 2) is not None
        r = httpx.post(f"{tb.url}/v1/audio/speech", json={"input": "hello"}, timeout=10)
        assert r.status_code == 400 and "error" in r.json()
        assert chat(tb.url).status_code == 500


def test_ignore_sigterm_stage_survives_sigterm():
    with defect("ignore-sigterm") as tb:
        os.kill(tb.stage_pids[0], signal.SIGTERM)
        time.sleep(1.5)
        assert not is_gone(tb.stage_pids[0])
        assert_serves(tb)
        os.kill(tb.stage_pids[1], signal.SIGTERM)  # the other stages still obey
        assert wait_until(lambda: status(tb.url) == 503, 2) is not None


def test_zombie_stage_is_never_reaped():
    with defect("zombie-stage") as tb:
        victim = tb.stage_pids[1]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: status(tb.url) == 503, 1) is not None
        time.sleep(1)
        assert psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
        assert chat(tb.url).status_code >= 500


def test_stale_health_stays_200_after_a_stage_died():
    with defect("stale-health") as tb:
        os.kill(tb.stage_pids[1], signal.SIGKILL)
        assert wait_until(lambda: chat(tb.url).status_code >= 500, 2) is not None
        assert wait_until(lambda: '_replica0_DP0"} 0.0' in metrics(tb), 2) is not None
        assert status(tb.url) == 200


def test_hang_on_stage_death_leaves_inflight_requests_hanging():
    with defect("hang-on-stage-death") as tb:
        s = StreamingChat(tb.url)
        assert s.wait_tokens(2)
        os.kill(tb.stage_pids[0], signal.SIGKILL)
        assert wait_until(lambda: status(tb.url) == 503, 3) is not None
        # chunks already on their way when the stage died may still arrive: wait for quiet
        assert wait_until(lambda: time.monotonic() - s.chunk_times[-1] > 0.3, 3) is not None
        seen = len(s.chunk_times)
        time.sleep(1.5)
        assert s.outcome is None and len(s.chunk_times) == seen  # hanging: no end, no tokens
        assert chat(tb.url).status_code >= 500     # new requests still fail fast
