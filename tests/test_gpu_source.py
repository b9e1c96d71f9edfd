"""The GPU source: baseline, change-only events, release timing on the simulated device with real
processes, errors recorded without ending the recording, and the fast burst after a fatal signal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from omnitrace.errors import OmnitraceError
from omnitrace.gpu import GpuBackendError
from omnitrace.gpu.sim import SimGpu, ensure_device
from omnitrace.record.gpu import GpuSource, choose_backend, make_gpu_source
from tests.harness import SourceRun, wait_for

GiB = 1 << 30

HOLDER = textwrap.dedent("""
    import sys, time
    from omnitrace.gpu.sim import SimGpu
    SimGpu(sys.argv[1]).allocate(0, int(sys.argv[2]))
    print("READY", flush=True)
    time.sleep(300)
""")


@pytest.fixture
def sim_device(tmp_path):
    return ensure_device(tmp_path / "gpu", device_count=1, capacity_bytes=16 * GiB,
                         release_delay_s=0.3)


def start_holder(device_dir, nbytes):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(device_dir), str(nbytes)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "READY"
    return holder


def test_killed_holder_memory_leaves_the_timeline_after_the_release_delay(tmp_path, sim_device):
    with SourceRun(tmp_path, GpuSource(SimGpu(sim_device))) as rec:
        holder = start_holder(sim_device, 3 * GiB)
        try:
            wait_for(lambda: rec.source._last_memory.get(0, (0, 0))[0] == 3 * GiB,
                     what="the allocation on the timeline")
            kill_t = time.monotonic_ns()
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            exit_t = time.monotonic_ns()
            wait_for(lambda: rec.source._last_memory[0][0] == 0, what="the release")
            wait_for(lambda: not rec.source._last_processes[0], what="the process list emptied")
        finally:
            holder.kill()
            holder.wait()
        timeline = rec.finish()

    memory = [(e.t, e.used) for e in timeline.of_kind("gpu_memory")]
    assert [used for _, used in memory] == [0, 3 * GiB, 0]  # baseline, hold, release: no repeats
    release_t = memory[-1][0]
    # The driver (here the simulated one) frees 0.3 s after the owner dies; the 200 Hz sampler
    # must see it within a few periods of that, not at the next 0.5 s poll.
    assert 0.3e9 <= release_t - kill_t
    assert release_t - exit_t <= 0.3e9 + 0.25e9, f"release seen {(release_t - exit_t) / 1e6:.0f} ms after exit"
    held = [(e.pid, e.used) for e in timeline.of_kind("gpu_process")]
    assert held == [(holder.pid, 3 * GiB), (holder.pid, 0)]
    assert timeline.footer["gpu"]["memory_samples"] > 50


class ScriptedBackend:
    """A GpuBackend whose answers the test sets; it can fail like a GPU that fell off the bus."""

    name = "scripted"

    def __init__(self, devices=2):
        self.devices = devices
        self.used = {d: 1 << 20 for d in range(devices)}
        self.held: dict[int, dict[int, int]] = {d: {} for d in range(devices)}
        self.failing: str | None = None
        self.memory_calls: list[int] = []
        self.closed = False

    def device_count(self):
        return self.devices

    def memory(self, device):
        self.memory_calls.append(time.monotonic_ns())
        if self.failing:
            raise GpuBackendError(f"GPU {device}: {self.failing}")
        return self.used[device], 80 * GiB

    def processes(self, device):
        if self.failing:
            raise GpuBackendError(f"GPU {device}: {self.failing}")
        return dict(self.held[device])

    def close(self):
        self.closed = True


def test_unchanged_values_write_nothing_after_the_baseline(tmp_path):
    backend = ScriptedBackend(devices=2)
    backend.held[1] = {4242: 5 << 20}
    with SourceRun(tmp_path, GpuSource(backend)) as rec:
        baseline = rec.source.counters()["events"]  # written in prepare(), before the command
        wait_for(lambda: rec.source.counters()["memory_samples"] > 40, what="samples")
        timeline = rec.finish()
    assert baseline == 3
    assert [(e.device, e.used) for e in timeline.of_kind("gpu_memory")] == [(0, 1 << 20), (1, 1 << 20)]
    assert [(e.device, e.pid, e.used) for e in timeline.of_kind("gpu_process")] == [(1, 4242, 5 << 20)]
    assert backend.closed


def test_a_lost_gpu_is_recorded_once_and_sampling_goes_on(tmp_path):
    backend = ScriptedBackend(devices=1)
    with SourceRun(tmp_path, GpuSource(backend)) as rec:
        backend.failing = "GPU is lost"
        # Both samplers (memory, processes) must have failed, each on its own schedule.
        wait_for(lambda: len(rec.source._last_error) == 2, what="both queries failing")
        backend.used[0] = 2 << 20  # before recovery: the first good sample is the new value
        backend.failing = None
        wait_for(lambda: rec.source._last_memory.get(0) == (2 << 20, 80 * GiB), what="recovery")
        timeline = rec.finish()
    errors = list(timeline.of_kind("gpu_error"))
    # One event per distinct failure per query (memory, processes), not one per sample.
    assert sorted(e.message for e in errors) == ["GPU 0: GPU is lost"] * 2
    assert [e.used for e in timeline.of_kind("gpu_memory")] == [1 << 20, 2 << 20]
    assert errors[0].t < list(timeline.of_kind("gpu_memory"))[-1].t


def test_a_fatal_signal_switches_memory_sampling_to_the_burst_rate(tmp_path):
    backend = ScriptedBackend(devices=1)
    # A slow period of 5 s: only the wake-up on the signal can put samples in the second after it.
    source = GpuSource(backend, memory_hz=0.2, burst_hz=500, burst_s=1.0)
    with SourceRun(tmp_path, source) as rec:
        time.sleep(1.0)
        signal_t = time.monotonic_ns()
        rec.ctx.fatal_signal(signal_t, 1234)
        time.sleep(1.0)
        time.sleep(1.0)  # the burst is over again
        rec.finish()
    calls = backend.memory_calls

    def rate(start, seconds):
        return sum(1 for t in calls if start <= t < start + seconds * 1e9) / seconds

    assert rate(signal_t - 1e9, 1.0) <= 1  # at most the baseline sample
    assert rate(signal_t, 1.0) >= 50  # 500 Hz asked; the slow schedule would give none
    assert rate(signal_t + 1.2e9, 0.8) <= 1  # back on the slow schedule
    assert source.counters()["bursts"] == 1


def test_backend_choice_is_explained_and_explicit_choices_fail_clearly(tmp_path, monkeypatch,
                                                                          sim_device):
    assert make_gpu_source("off") is None
    monkeypatch.setenv("OMNITRACE_SIM_GPU", str(sim_device))
    backend, why = choose_backend("auto")
    assert backend.name == "sim" and "sim chosen" in why
    source = make_gpu_source("sim")
    assert source.describe()["backend"] == "sim" and source.describe()["chosen"] == "--gpu sim"
    monkeypatch.setenv("OMNITRACE_SIM_GPU", str(tmp_path / "nowhere"))
    with pytest.raises(OmnitraceError, match="--gpu sim: no simulated GPU"):
        make_gpu_source("sim")
    # auto with the variable set: the recorder may start before the testbed that would create
    # the device (a matrix run's first row), so auto creates it
    backend, why = choose_backend("auto")
    assert backend.name == "sim" and (tmp_path / "nowhere" / "device.json").exists()
    with pytest.raises(OmnitraceError, match="expected one of"):
        make_gpu_source("cuda")


def test_testbed_stage_killed_its_memory_leaves_the_timeline_the_release_delay_after_exit(
        tmp_path):
    from omnitrace.testbed.harness import running_testbed  # the system under test, on the sim

    device = ensure_device(tmp_path / "gpu", release_delay_s=0.5)
    with running_testbed(["--step-mem", "1MiB"], sim_dir=device) as tb, \
            SourceRun(tmp_path, GpuSource(SimGpu(device))) as rec:
        stage = tb.stage_pids[0]  # the thinker: alone on GPU 0
        wait_for(lambda: stage in rec.source._last_processes.get(0, {}), what="stage 0 on GPU 0")
        kill_t = time.monotonic_ns()
        os.kill(stage, signal.SIGKILL)
        wait_for(lambda: not _alive(stage), what="stage 0 gone")
        exit_seen_t = time.monotonic_ns()  # an upper bound of its exit
        wait_for(lambda: stage not in rec.source._last_processes.get(0, {}),
                 what="stage 0 off the process list")
        # The memory sampler runs on its own schedule: the list may drop the pid a sample
        # before the device total does, so wait for the drop in the total as well.
        rec.wait_for_event("gpu_memory", lambda e: e.device == 0 and e.t > kill_t
                           and e.used < 2 * GiB, what="GPU 0 memory back")
        timeline = rec.finish()

    stage_events = [e for e in timeline.of_kind("gpu_process") if e.pid == stage]
    assert stage_events[0].used >= 2 * GiB and stage_events[-1].used == 0
    gpu0 = [e for e in timeline.of_kind("gpu_memory") if e.device == 0]
    release = next(e for e in gpu0 if e.t > kill_t and e.used < 2 * GiB)
    assert release.used == 0  # nothing else holds GPU 0
    # Released 0.5 s after the exit, as configured: not before, and not much later either.
    assert release.t - kill_t >= 0.5e9 - 5e6
    assert release.t - exit_seen_t <= 0.5e9 + 0.3e9, f"{(release.t - exit_seen_t) / 1e6:.0f} ms"
    assert abs(stage_events[-1].t - release.t) < 0.2e9  # the 20 Hz list agrees


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
