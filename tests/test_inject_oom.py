"""The OOM hog on the simulated device: fills, says READY, holds, releases; ERROR when it cannot."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from omnitrace.gpu import sim

GiB, MiB = 1 << 30, 1 << 20
HOG = [sys.executable, "-m", "omnitrace.inject", "oom"]


@pytest.fixture
def device(tmp_path, monkeypatch):
    path = sim.ensure_device(tmp_path / "gpu", device_count=2, capacity_bytes=4 * GiB,
                             release_delay_s=0.0)
    monkeypatch.setenv(sim.ENV_VAR, str(path))
    return sim.SimGpu(path)


def start_hog(*args: str) -> subprocess.Popen:
    return subprocess.Popen(HOG + list(args), stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def first_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()  # the hog prints READY or ERROR before anything else
    return line.strip()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fills_free_memory_in_256_mib_chunks_and_releases_on_terminate(device):
    other = device.allocate(0, 1 * GiB)  # a server already holds 1 GiB
    hog = start_hog("--devices", "0,1", "--ratio", "0.92", "--hold", "60")
    try:
        assert first_line(hog).startswith("READY:")
        held0 = device.processes(0)[hog.pid]
        held1 = device.processes(1)[hog.pid]
        assert held0 == int(3 * GiB * 0.92) // (256 * MiB) * 256 * MiB
        assert held1 == int(4 * GiB * 0.92) // (256 * MiB) * 256 * MiB
        hog.terminate()
        assert hog.wait(timeout=10) == 0
        assert hog.pid not in device.processes(0) and hog.pid not in device.processes(1)
    finally:
        stop(hog)
        other.free()


def test_strict_fills_tails_to_within_one_mib(device):
    hog = start_hog("--devices", "0", "--ratio", "0.95", "--strict", "--hold", "60")
    try:
        assert first_line(hog).startswith("READY:")
        target = int(4 * GiB * 0.95)
        assert 0 <= target - device.processes(0)[hog.pid] < MiB
    finally:
        stop(hog)


def test_error_and_exit_2_when_the_device_does_not_exist(device):
    hog = start_hog("--devices", "7", "--hold", "5")
    try:
        assert first_line(hog).startswith("ERROR:")
        assert hog.wait(timeout=10) == 2
    finally:
        stop(hog)


def test_error_when_nothing_is_free(device):
    full = device.allocate(0, 4 * GiB)
    hog = start_hog("--devices", "0", "--hold", "5")
    try:
        assert first_line(hog).startswith("ERROR:")
        assert hog.wait(timeout=10) == 2
    finally:
        stop(hog)
        full.free()


def test_hold_is_bounded(device):
    hog = start_hog("--devices", "0", "--hold", "0.5")
    try:
        assert first_line(hog).startswith("READY:")
        t0 = time.monotonic()
        assert hog.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
        assert "hold ended" in hog.stdout.read()
        assert hog.pid not in device.processes(0)
    finally:
        stop(hog)
