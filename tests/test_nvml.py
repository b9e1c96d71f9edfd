"""The NVML backend on a real NVIDIA GPU (run on the H200; skipped where NVML sees no GPU):
queries answer fast, a CUDA process shows in the per-process list with its pid, and a SIGKILLed
holder's memory leaves the timeline soon after its exit."""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from omnitrace.gpu import GpuBackendError
from omnitrace.gpu.nvml import NvmlBackend
from omnitrace.record.gpu import GpuSource
from omnitrace.record.source import RecordContext
from omnitrace.timeline import TimelineWriter, make_header, read_timeline

pytestmark = pytest.mark.gpu
GiB = 1 << 30

HOLDER = textwrap.dedent("""
    import sys, time, torch
    buffer = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    print("READY", flush=True)
    time.sleep(300)
""")


@pytest.fixture
def nvml():
    try:
        backend = NvmlBackend()
    except GpuBackendError as exc:
        pytest.skip(f"no NVML GPU here: {exc}")
    if backend.device_count() == 0:
        backend.close()
        pytest.skip("NVML sees no GPU")
    yield backend
    backend.close()


@pytest.fixture
def holder():
    if importlib.util.find_spec("torch") is None:
        pytest.fail("torch is needed to allocate CUDA memory on the GPU machine")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(2 * GiB)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "READY"
    yield proc
    proc.kill()
    proc.wait()


def test_memory_queries_are_cheap_and_consistent(nvml):
    for device in range(nvml.device_count()):
        used, total = nvml.memory(device)
        assert 0 <= used <= total and total > 0
    started = time.perf_counter()
    for _ in range(1000):
        nvml.memory(0)
    per_call_us = (time.perf_counter() - started) / 1000 * 1e6
    # about 5 us on an H200 (driver 580); 200 Hz sampling needs far less than 1 ms
    assert per_call_us < 500, f"{per_call_us:.1f} us per memory query"
    assert nvml.describe()["memory_api"] in (["v1"], ["v2"])


def test_a_cuda_process_is_listed_with_its_pid_and_bytes(nvml, holder):
    held = nvml.processes(0)
    assert holder.pid in held
    assert held[holder.pid] >= 2 * GiB  # its 2 GiB plus the CUDA context


def test_sigkilled_holder_memory_leaves_the_timeline_after_its_exit(nvml, holder, tmp_path):
    path = tmp_path / "run.jsonl"
    writer = TimelineWriter(path, make_header(["test"], {"gpu": {}}))
    ctx = RecordContext(emit=writer.append)
    source = GpuSource(nvml)
    source.prepare(ctx)
    source.start(ctx)
    try:
        before_kill = source._last_memory[0][0]
        kill_t = time.monotonic_ns()
        holder.send_signal(signal.SIGKILL)
        ctx.fatal_signal(kill_t, holder.pid)  # as the kernel source does: sample at 1 kHz now
        holder.wait(timeout=30)
        deadline = time.monotonic() + 30
        # Both samplers must have seen the exit: the list and the device total run on their own
        # schedules, and either may lag the other by a period.
        while time.monotonic() < deadline and (
                holder.pid in source._last_processes.get(0, {})
                or source._last_memory[0][0] > before_kill - 1.8 * GiB):
            time.sleep(0.01)
    finally:
        source.stop()
        writer.close({"gpu": source.counters()})
    timeline = read_timeline(path)
    drops = [e for e in timeline.of_kind("gpu_memory")
             if e.device == 0 and e.t > kill_t and e.used <= before_kill - 1.8 * GiB]
    assert drops, "device memory never dropped by the holder's 2 GiB"
    release_ms = (drops[0].t - kill_t) / 1e6
    # measured 70-150 ms on an H200; the 0.5 s poll of the upstream suite is the outer bound here
    assert release_ms < 2000, f"released {release_ms:.0f} ms after SIGKILL"
    gone = [e for e in timeline.of_kind("gpu_process") if e.pid == holder.pid and e.used == 0]
    assert gone and gone[0].t > kill_t
    print(f"kill->device memory back {release_ms:.1f} ms; "
          f"kill->process gone {(gone[0].t - kill_t) / 1e6:.1f} ms")
