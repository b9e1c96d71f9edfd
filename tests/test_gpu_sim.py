"""The simulated GPU device: memory counted per live process, released a delay after death, OOM."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from omnitrace.gpu import GpuOutOfMemory, sim
from tests.harness import ready_processes

GiB = 1 << 30


@pytest.fixture
def device(tmp_path):
    return sim.SimGpu(sim.ensure_device(tmp_path / "gpu", device_count=2, capacity_bytes=8 * GiB))


@pytest.fixture
def holder(device):
    """Start processes that allocate on the device and hold it; killed at the end regardless."""
    with ready_processes() as start:
        def hold(nbytes: int, device_index: int = 0, delay_s: float | None = None):
            return start("import sys, time; from omnitrace.gpu.sim import SimGpu; "
                         f"SimGpu({str(device.path)!r}).allocate({device_index}, {nbytes}, {delay_s!r}); "
                         "print('READY', flush=True); time.sleep(600)")
        yield hold


def entries(device, index: int = 0) -> list:
    """The device's ledger files (not its lock)."""
    return [f for f in (device.path / str(index)).iterdir() if not f.name.startswith(".")]


# A pid namespace of its own, as a container has (and its own /proc, as a container mounts);
# --kill-child: the holder dies with unshare, which ready_processes kills.
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


@pytest.fixture
def namespaced_holder(device):
    """A holder in its own pid namespace: (its host pid, its ledger file)."""
    if os.geteuid() != 0:
        pytest.skip("a new pid namespace needs root here")
    with ready_processes() as start:
        def hold(nbytes: int):
            unshare = start("import time; from omnitrace.gpu.sim import SimGpu; "
                            f"SimGpu({str(device.path)!r}).allocate(0, {nbytes}); "
                            "print('READY', flush=True); time.sleep(600)", prefix=UNSHARE)
            [child] = psutil.Process(unshare.pid).children()
            [entry] = entries(device)
            return child.pid, entry
        yield hold


def wait_until(predicate, timeout_s: float, step_s: float = 0.002) -> float:
    """Seconds until predicate() held; fails the test at the deadline."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - start


def test_allocation_counts_for_its_live_owner(device, holder):
    p = holder(3 * GiB, device_index=1)
    assert device.memory(1) == (3 * GiB, 8 * GiB)
    assert device.processes(1) == {p.pid: 3 * GiB}
    assert device.processes(0) == {}
    assert device.device_count() == 2


def test_allocation_beyond_capacity_fails_like_cuda_oom(device, holder):
    holder(6 * GiB)
    with pytest.raises(GpuOutOfMemory, match="CUDA out of memory"):
        device.allocate(0, 3 * GiB)
    assert device.free_memory(0) == (2 * GiB, 8 * GiB)
    device.allocate(0, 2 * GiB).free()   # what fits still fits


def test_free_releases_at_once(device):
    a = device.allocate(0, GiB)
    assert device.processes(0) == {os.getpid(): GiB}
    a.free()
    assert device.memory(0)[0] == 0


def test_memory_released_about_the_delay_after_sigkill(device, holder):
    p = holder(GiB)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the first reader to see it dead starts the 100 ms clock
    seen_dead = time.monotonic()
    assert device.memory(0)[0] == GiB
    wait_until(lambda: device.memory(0)[0] == 0, 2.0)
    released = time.monotonic() - seen_dead
    assert 0.08 <= released <= 1.0  # not before the delay; the upper bound only rules out "never"


def test_release_delay_is_per_allocation(device, holder):
    slow, fast = holder(GiB, delay_s=1.0), holder(2 * GiB)
    for p in (slow, fast):
        p.kill()
        p.wait()
    device.memory(0)
    wait_until(lambda: device.memory(0)[0] == GiB, 0.8)
    assert device.processes(0) == {slow.pid: GiB}
    released = wait_until(lambda: device.memory(0)[0] == 0, 2.0)
    assert released >= 0.5


def test_zombie_memory_is_released_before_reaping(device, holder):
    p = holder(GiB)
    os.kill(p.pid, signal.SIGKILL)
    wait_until(lambda: open(f"/proc/{p.pid}/stat").read().split(") ")[1][0] == "Z", 5.0)
    wait_until(lambda: device.memory(0)[0] == 0, 2.0)
    assert os.path.exists(f"/proc/{p.pid}")   # still an unreaped zombie


def test_reused_pid_does_not_inherit_memory(device):
    # An entry whose recorded start time is not this process's: a previous owner of the pid.
    (device.path / "0" / f"{os.getpid()}-1-{GiB}-100-deadbeef").touch()
    assert device.memory(0)[0] == GiB          # counted for the release delay after it was seen gone
    wait_until(lambda: device.memory(0)[0] == 0, 2.0)


def test_an_owner_in_another_pid_namespace_is_reported_under_its_host_pid(device,
                                                                          namespaced_holder):
    """As NVML reports a container's process: by the pid the host knows, also for the release
    delay after it died (first seen dead by this reader, which had translated it)."""
    host_pid, entry = namespaced_holder(GiB)
    assert entry.name.startswith("1-") and host_pid != 1   # the namespace's pid 1 wrote it
    assert device.processes(0) == {host_pid: GiB}
    os.kill(host_pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(host_pid) or
               psutil.Process(host_pid).status() == psutil.STATUS_ZOMBIE, 5.0)
    assert device.processes(0) == {host_pid: GiB}    # the delay starts now
    wait_until(lambda: device.processes(0) == {} and device.memory(0)[0] == 0, 2.0)
    assert entries(device) == []


def test_a_reused_namespace_pid_is_not_attributed(device, namespaced_holder):
    """An entry of the holder's namespace and pid but an older start time: an earlier process
    with that namespace pid, gone; the live holder must not inherit its memory."""
    host_pid, entry = namespaced_holder(GiB)
    ns = entry.name.rsplit("-", 1)[1]
    (device.path / "0" / f"1-1-{2 * GiB}-100-feedf00d-{ns}").touch()
    assert device.processes(0) == {host_pid: GiB}
    assert device.memory(0)[0] == 3 * GiB            # counted the release delay, for no pid
    wait_until(lambda: device.memory(0)[0] == GiB, 2.0)


def fake_namespace_entry(device, nbytes: int) -> None:
    """An entry whose namespace no process is in, naming this process's own pid and start time:
    read as a pid of ours it would be attributed to this test."""
    dev, _ = sim.own_pid_ns()
    start = sim.read_stat(os.getpid())[2]
    (device.path / "0" / f"{os.getpid()}-{start}-{nbytes}-100-deadbeef-{dev}.1").touch()


def test_an_owner_of_a_namespace_gone_is_dead_to_a_reader_that_sees_every_namespace(device):
    """A reader in the initial pid namespace sees every process: one it cannot find is gone."""
    fake_namespace_entry(device, GiB)
    assert device.processes(0) == {} and device.memory(0)[0] == GiB
    wait_until(lambda: device.memory(0)[0] == 0, 2.0)


def test_an_owner_a_reader_cannot_see_counts_for_no_pid_and_stays(device, monkeypatch):
    """A reader in a container cannot see the host's namespaces: it counts their memory (as NVML
    in a container shows memory used with no process) and leaves the entry alone."""
    dev, _ = sim.own_pid_ns()
    monkeypatch.setattr(device._hosts, "own", (dev, 2))     # this reader is in a container
    fake_namespace_entry(device, GiB)
    for _ in range(3):
        assert device.processes(0) == {} and device.memory(0) == (GiB, 8 * GiB)
        time.sleep(0.1)   # past the release delay: an entry seen dead would be gone by now
    assert len(entries(device)) == 1


def test_files_that_are_not_allocations_are_skipped(device):
    for name in ("notes.txt", "1-2-x-4-tag", "1-2-3-4-tag-5", "1-2-3-4-tag-5.6.7~8"):
        (device.path / "0" / name).touch()
    device.allocate(0, GiB)
    assert device.processes(0) == {os.getpid(): GiB}


def test_missing_device_says_how_to_make_one(tmp_path):
    from omnitrace.gpu import GpuBackendError
    with pytest.raises(GpuBackendError, match="testbed serve"):
        sim.SimGpu(tmp_path / "nothing")


def test_alloc_api_uses_the_device_named_by_the_environment(device, monkeypatch):
    from omnitrace.gpu import alloc
    monkeypatch.setenv(sim.ENV_VAR, str(device.path))
    alloc.open_allocator.cache_clear()
    try:
        assert alloc.kind() == "sim"
        handle = alloc.allocate(1, GiB)
        assert alloc.free_memory(1) == (7 * GiB, 8 * GiB)
        handle.free()
        assert alloc.device_count() == 2
    finally:
        alloc.open_allocator.cache_clear()


def test_allocator_choice_skips_bindings_that_see_no_gpu(device, monkeypatch):
    """On a GPU machine the first binding that imports and sees a GPU wins; one that imports but
    sees none (a CPU-only torch) is passed over; OMNITRACE_SIM_GPU forces the simulated device."""
    from omnitrace.gpu import alloc

    class NoGpu:
        name = "no-gpu"

        def usable(self):
            return False

    class Broken:
        def __init__(self):
            raise RuntimeError("libcudart.so.12: cannot open shared object file")

    class Works:
        name = "works"

        def usable(self):
            return True

    monkeypatch.delenv(sim.ENV_VAR, raising=False)
    monkeypatch.setattr(alloc.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    monkeypatch.setattr(alloc.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(alloc, "_REAL", (("a", NoGpu), ("b", Broken), ("c", Works)))
    alloc.open_allocator.cache_clear()
    try:
        assert alloc.kind() == "works"
        monkeypatch.setattr(alloc, "_REAL", (("a", NoGpu), ("b", Broken)))
        monkeypatch.setattr(sim, "DEFAULT_DIR", str(device.path))
        alloc.open_allocator.cache_clear()
        assert alloc.kind() == "sim"  # nothing usable: the simulated device at its default place
        assert alloc.free_memory(1) == (8 * GiB, 8 * GiB)
        monkeypatch.setattr(alloc, "_REAL", (("c", Works),))
        monkeypatch.setenv(sim.ENV_VAR, str(device.path))
        alloc.open_allocator.cache_clear()
        assert alloc.kind() == "sim"  # the variable wins over a usable binding
    finally:
        alloc.open_allocator.cache_clear()


def test_torch_allocation_drops_its_block_before_emptying_the_cache():
    """torch.cuda.empty_cache only returns blocks nobody references: freeing must drop the tensor
    first, or a stage's freed workspace stays cached in it and the OOM hog never sees it free.
    torch itself needs a GPU; this double records what empty_cache would find."""
    import types
    import weakref

    from omnitrace.gpu import alloc

    class Block:
        pass

    calls = []  # one entry per empty_cache call: was the block still referenced then?

    def empty_cache():
        calls.append(block_ref() is not None)

    cuda = types.SimpleNamespace(OutOfMemoryError=MemoryError, empty_cache=empty_cache)
    torch = types.SimpleNamespace(cuda=cuda, uint8="uint8", empty=lambda n, dtype, device: Block())
    allocator = alloc.TorchAllocator.__new__(alloc.TorchAllocator)
    allocator.torch = torch
    handle = allocator.allocate(0, 1 << 20)
    block_ref = weakref.ref(handle._block)
    handle.free()
    assert calls == [False]
    handle.free()  # twice is harmless: nothing more is freed
    assert calls == [False]
