"""The testbed's correct behaviour, row by row of the matrix, against real processes and HTTP."""
from __future__ import annotations

import json
import os
import signal
import time

import httpx
import psutil
import pytest

from omnitrace.gpu import sim
from omnitrace.testbed.harness import StreamingChat, is_gone, running_testbed, wait_until
from tests.harness import ready_processes

TITLES = ["VLLM::StageEngineCoreProc_thinker_replica0_DP0",
          "VLLM::StageEngineCoreProc_talker_replica0_DP0",
          "VLLM::StageEngineCoreProc_code2wav_replica0_DP0"]


def status(url: str, path: str = "/health") -> int | None:
    try:
        return httpx.get(url + path, timeout=5).status_code
    except httpx.TransportError:
        return None


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=20,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})


def device_used(tb) -> int:
    gpu = sim.SimGpu(tb.sim_dir)
    return sum(gpu.memory(d)[0] for d in range(gpu.device_count()))


def assert_openai_error(r: httpx.Response) -> None:
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert "type" in error and "code" in error


@pytest.fixture
def tb():
    with running_testbed() as testbed:
        yield testbed


@pytest.fixture(scope="module")
def shared_tb():
    """One untouched testbed for the read-only endpoint tests."""
    with running_testbed() as testbed:
        yield testbed


# -- topology -------------------------------------------------------------------------------

def test_process_tree_is_root_tracker_and_three_titled_stages(shared_tb):
    root = psutil.Process(shared_tb.pid)
    children = root.children()
    stages = [p for p in children if p.name().startswith("VLLM::")]
    trackers = [p for p in children if "multiprocessing.resource_tracker" in " ".join(p.cmdline())]
    assert sorted(p.name() for p in stages) == sorted(TITLES)
    assert all(" ".join(p.cmdline()).strip() == p.name() for p in stages)   # as setproctitle leaves it
    assert len(trackers) == 1 and len(children) == 4
    assert sorted(p.pid for p in stages) == sorted(shared_tb.stage_pids)
    assert all(p.ppid() == shared_tb.pid for p in children)


def test_wan22_has_one_diffusion_worker():
    with running_testbed(["--topology", "wan22"]) as tb:
        names = [p.name() for p in psutil.Process(tb.pid).children()]
        assert "vLLM-Omni::DiffusionWorker-0" in names and len(names) == 2
        r = httpx.post(f"{tb.url}/v1/videos", json={"prompt": "a cat", "num_frames": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "queued"
        video = r.json()["id"]
        assert wait_until(lambda: httpx.get(f"{tb.url}/v1/videos/{video}").json()["status"]
                          == "completed", 10)


def test_stages_hold_their_gpu_memory_on_their_devices(shared_tb):
    gpu = sim.SimGpu(shared_tb.sim_dir)
    two = 2 << 30
    # Each stage also takes and frees a step workspace every heartbeat: wait for a read between.
    s0, s1, s2 = shared_tb.stage_pids
    assert wait_until(lambda: gpu.processes(0) == {s0: two}, 2) is not None
    assert wait_until(lambda: gpu.processes(1) == {s1: two, s2: two}, 2) is not None


# -- endpoints ------------------------------------------------------------------------------

def test_health_and_models(shared_tb):
    assert status(shared_tb.url) == 200
    models = httpx.get(f"{shared_tb.url}/v1/models").json()
    assert models["data"][0]["id"] == "Qwen/Qwen3-Omni-30B-A3B-Instruct"


def test_chat_json_returns_max_tokens_at_the_pace(shared_tb):
    start = time.monotonic()
    r = chat(shared_tb.url, max_tokens=10)
    took = time.monotonic() - start
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 10
    assert r.json()["choices"][0]["message"]["content"].startswith(" The quick")
    assert 0.4 <= took < 5    # 20 tokens/s


def test_chat_stream_delivers_tokens_over_time(shared_tb):
    s = StreamingChat(shared_tb.url, max_tokens=10)
    s.join(20)
    assert s.outcome == "ok"
    assert len(s.lines) == 10 + 2       # tokens, the finish chunk, [DONE]
    assert s.chunk_times[9] - s.chunk_times[0] >= 0.2  # 0.45 s at 20 tokens/s: paced, not a burst


def test_chat_with_audio_streams_text_and_audio(shared_tb):
    s = StreamingChat(shared_tb.url, max_tokens=4, modalities=["text", "audio"])
    s.join(20)
    assert s.outcome == "ok"
    assert sum('"content"' in line for line in s.lines) == 4
    assert sum('"audio"' in line for line in s.lines) == 4


def test_speech_streams_audio_bytes(shared_tb):
    times, size = [], 0
    with httpx.stream("POST", f"{shared_tb.url}/v1/audio/speech", timeout=20,
                      json={"input": "one two three four five"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        for chunk in r.iter_bytes():
            times.append(time.monotonic())
            size += len(chunk)
    assert size == 44 + 10 * 1600
    assert times[-1] - times[0] >= 0.2


def test_metrics_count_requests_and_stage_liveness(shared_tb):
    chat(shared_tb.url)
    text = httpx.get(f"{shared_tb.url}/metrics").text
    assert 'testbed_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "testbed_requests_in_flight 0.0" in text
    assert text.count("testbed_stage_alive{") == 3 and "testbed_engine_oom 0.0" in text


def test_bad_request_has_the_openai_error_shape(shared_tb):
    # the Qwen topology speaks; a request for an unknown modality on wan22 is covered above
    r = httpx.get(f"{shared_tb.url}/v1/videos/nope")
    assert r.status_code == 404
    assert_openai_error(r)


# -- a stage dies -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stage_death_gives_stable_5xx_within_1_s(tb, sig):
    inflight = StreamingChat(tb.url)
    assert inflight.wait_tokens(2)
    victim = tb.stage_pids[1]
    os.kill(victim, sig)
    unhealthy = wait_until(lambda: status(tb.url) == 503, 5, step_s=0.01)
    assert unhealthy is not None and unhealthy < 1.0
    inflight.join(5)
    # as vLLM 0.32 ends a stream whose engine died: an OpenAI error event, then [DONE]
    assert inflight.outcome == "error-event", inflight.lines[-3:]
    assert inflight.lines[-1] == "data: [DONE]"
    assert json.loads(inflight.lines[-2][len("data: "):])["error"]["message"]
    for _ in range(3):                                     # stable: stays so
        r = chat(tb.url)
        assert r.status_code >= 500
        assert_openai_error(r)
        time.sleep(0.3)
    assert status(tb.url) == 503
    assert wait_until(lambda: not psutil.pid_exists(victim), 5)   # reaped, not a zombie
    assert psutil.Process(tb.pid).is_running()


# -- the API server is signalled ---------------------------------------------------------------

@pytest.mark.parametrize("sig,expected", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)])
def test_graceful_shutdown_ends_every_process_and_frees_memory(tb, sig, expected):
    tree = tb.tree_pids()
    assert wait_until(lambda: device_used(tb) == 6 << 30, 2) is not None  # between step workspaces
    os.kill(tb.pid, sig)
    assert tb.proc.wait(10) == expected
    # the resource tracker leaves when its pipe closes, a moment after the root
    assert wait_until(lambda: all(is_gone(pid) for pid in tree), 2) is not None
    assert wait_until(lambda: device_used(tb) == 0, 2) is not None
    log = tb.log()
    for line in ["[AsyncOmni] Shutting down", "[Orchestrator] Received shutdown signal",
                 "Shutting down all 3 client(s)", "[StagePool] Stage 2 replica 0 shut down",
                 "Shutdown initiated", "Shutdown complete", "INFO:     Shutting down",
                 "Finished server process"]:
        assert line in log
    # one by one, in order
    assert log.index("Stage 0 replica 0 shut down") < log.index("Stage 1 replica 0 shut down") \
        < log.index("Stage 2 replica 0 shut down")


def test_sigterm_under_load_fails_inflight_promptly(tb):
    streams = [StreamingChat(tb.url) for _ in range(3)]
    assert all(s.wait_tokens(2) for s in streams)
    signalled = time.monotonic()
    os.kill(tb.pid, signal.SIGTERM)
    for s in streams:
        s.join(10)
        # a failure either way: vLLM's error event then [DONE], or the connection cut
        assert s.outcome in ("error-event", "RemoteProtocolError", "ReadError")
        assert s.ended_at - signalled < 2.0
    assert tb.proc.wait(10) == -signal.SIGTERM
    assert status(tb.url) is None                           # nothing listens any more


def test_sigkill_of_the_server_takes_the_stages_with_it(tb):
    tree = tb.tree_pids()
    os.kill(tb.pid, signal.SIGKILL)
    gone = wait_until(lambda: all(is_gone(pid) for pid in tree), 10)
    assert gone is not None and gone < 3
    assert wait_until(lambda: device_used(tb) == 0, 2) is not None
    assert "Shutdown complete" in tb.log()                  # stages ran their cleanup (PDEATHSIG)


def test_sigterm_to_all_processes_under_load_ends_everything(tb):
    streams = [StreamingChat(tb.url) for _ in range(2)]
    assert all(s.wait_tokens(2) for s in streams)
    tree = tb.tree_pids()
    start = time.monotonic()
    for pid in tree:                                        # root first, then 0.1 s apart
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        time.sleep(0.1)
    took = wait_until(lambda: all(is_gone(pid) for pid in tree), 10)
    assert took is not None and time.monotonic() - start < 5
    for s in streams:
        s.join(5)
        assert s.outcome != "ok"
    assert wait_until(lambda: device_used(tb) == 0, 2) is not None


# -- OOM --------------------------------------------------------------------------------------

HOG = """
import sys, time
from omnitrace.gpu import alloc
for d in range(alloc.device_count()):
    free, _ = alloc.free_memory(d)
    alloc.allocate(d, int(free * 0.92))
print("READY", flush=True)
time.sleep(600)
"""


@pytest.fixture
def hog_factory():
    with ready_processes() as start:
        yield lambda tb: start(HOG, env={**os.environ, sim.ENV_VAR: tb.sim_dir})


def test_oom_gives_503_and_500_then_recovers(tb, hog_factory):
    hog = hog_factory(tb)
    assert wait_until(lambda: status(tb.url) == 503, 3.0, step_s=0.01) is not None
    start = time.monotonic()
    r = chat(tb.url)
    assert r.status_code == 500 and time.monotonic() - start < 3.0  # fails fast, does not hang
    assert "out of memory" in r.json()["error"]["message"]
    r = httpx.post(f"{tb.url}/v1/audio/speech", json={"input": "hello"}, timeout=20)
    assert r.status_code == 500
    assert_openai_error(r)
    assert "testbed_engine_oom 1.0" in httpx.get(f"{tb.url}/metrics").text
    hog.kill()
    hog.wait()
    assert wait_until(lambda: status(tb.url) == 200, 3) is not None
    assert chat(tb.url).status_code == 200
    assert psutil.Process(tb.pid).is_running()


def test_oom_fails_an_inflight_stream(tb, hog_factory):
    s = StreamingChat(tb.url)
    assert s.wait_tokens(2)
    hog_factory(tb)
    s.join(5)
    assert s.outcome == "error-event"                       # as vLLM 0.32 ends a failed stream
    assert any(line.startswith('data: {"error"') and "out of memory" in line for line in s.lines)


def test_a_model_it_does_not_serve_is_404_like_vllm(shared_tb):
    served = httpx.get(f"{shared_tb.url}/v1/models", timeout=10).json()["data"][0]["id"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    wrong = httpx.post(f"{shared_tb.url}/v1/chat/completions", timeout=20,
                       json={**chat, "model": "default"})
    assert wrong.status_code == 404
    assert wrong.json()["error"] == {"message": "The model `default` does not exist.",
                                     "type": "NotFoundError", "param": "model", "code": 404}
    for body in ({**chat, "model": served}, chat):  # the served name, or none at all
        assert httpx.post(f"{shared_tb.url}/v1/chat/completions", json=body,
                          timeout=20).status_code == 200
    speech = httpx.post(f"{shared_tb.url}/v1/audio/speech", timeout=20,
                        json={"input": "hello", "model": "default"})
    assert speech.status_code == 404
