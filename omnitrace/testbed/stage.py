"""A stage process (VLLM::StageEngineCoreProc_<label>_replica0_DP0 or vLLM-Omni::DiffusionWorker-0).

Spawned by the orchestrator; talks to it over one multiprocessing Pipe (no queue shared between
stages, so a stage killed mid-write cannot wedge the others). It holds its share of GPU memory from
start to exit, and steps at the configured pace: every step takes a workspace allocation first, so
when an OOM hog has filled the device the step fails like a CUDA OOM would.

Messages in:   ("submit", rid, n)  produce n items | ("submit", rid, None)  transform fed items
               ("feed", rid, item) | ("end", rid) | ("abort", rid) | ("shutdown",)
               ("crash", message)  (crash-on-bad-input: exit 1 as an engine that died of a request)
Messages out:  ("ready", pid) | ("item", rid, item) | ("done", rid) | ("error", rid, message)
               ("oom", message) | ("mem_ok",) | ("fatal", message)
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque

from omnitrace.gpu import GpuOutOfMemory, alloc
from omnitrace.testbed import logs
from omnitrace.testbed.config import (ORPHAN_DEVICE_SHARE, SLOW_RELEASE_S, StageSpec,
                                      TestbedConfig)

log = logging.getLogger("core.py")
PR_SET_PDEATHSIG = 1
WORDS = "The quick brown fox jumps over the lazy dog while the model keeps talking".split()
AUDIO_CHUNK = bytes(range(256)) * 6 + bytes(64)   # 1600 bytes: 50 ms of 16 kHz 16-bit mono


def set_parent_death_signal(sig: int, parent_pid: int) -> None:
    """PR_SET_PDEATHSIG fires when the parent *thread* that forked us exits; the orchestrator
    spawns from the API server's main thread, which lives as long as the server. Called from this
    process's main thread, first thing, then the parent is checked: had it died before the prctl,
    no signal would ever come."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(128 + sig)


def _exit_on_signal(signum, frame):
    # A second one (parent-death signal and a "kill all" close together) must not interrupt the
    # cleanup the first started, wherever the interpreter is in its teardown.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)   # as vLLM's engine core: cleanup runs in `finally`


class Work:
    """One request's share of this stage: either n items to produce, or fed items to transform."""

    def __init__(self, n: int | None):
        self.remaining = n
        self.inbox: deque = deque()
        self.ended = n is not None
        self.produced = 0

    @property
    def pending(self) -> bool:
        return (self.remaining or 0) > 0 or bool(self.inbox)


class StageEngine:
    def __init__(self, spec: StageSpec, config: TestbedConfig, conn):
        self.spec, self.config, self.conn = spec, config, conn
        # The reference layout wants 2 GPUs; on a box with fewer the stages share them.
        self.device = spec.device % alloc.device_count()
        self.step_mem = config.step_mem or int(config.step_mem_fraction *
                                               alloc.free_memory(self.device)[1])
        self.work: dict[str, Work] = {}
        self.weights = None
        self.oom = False

    def start(self) -> None:
        delay = SLOW_RELEASE_S if self.config.has("slow-release") else None
        self.weights = alloc.allocate(self.device, self.weights_size(), release_delay_s=delay)
        self.conn.send(("ready", os.getpid()))

    def weights_size(self) -> int:
        if self.config.has("orphan-keeps-device") and self.spec.index == 0:
            return int(ORPHAN_DEVICE_SHARE * alloc.free_memory(self.device)[1])
        return self.config.stage_mem

    def run(self) -> None:
        tick = 1.0 / self.config.tokens_per_s
        next_step = time.monotonic()
        while True:
            wait = max(next_step - time.monotonic(), 0)
            if self.conn.poll(wait):
                self.receive()
                continue
            self.step()
            next_step += tick if self.work else self.config.heartbeat_s
            next_step = max(next_step, time.monotonic() - tick)  # no burst after a stall

    def receive(self) -> None:
        while self.conn.poll():
            kind, *args = self.conn.recv()
            if kind == "shutdown":
                raise SystemExit(0)
            if kind == "crash":   # the crash-on-bad-input defect: a request the engine dies of
                log.error("EngineCore encountered an issue: %s", args[0])
                raise SystemExit(1)
            rid = args[0]
            if kind == "submit":
                self.work[rid] = Work(args[1])
            elif kind == "feed" and rid in self.work:
                self.work[rid].inbox.append(args[1])
            elif kind == "end" and rid in self.work:
                self.work[rid].ended = True
            elif kind == "abort":
                self.work.pop(rid, None)

    def step(self) -> None:
        try:
            # Freed at once: a step's workspace only has to fit, it must not look like a leak to
            # the hog measuring free memory.
            alloc.allocate(self.device, self.step_mem).free()
        except GpuOutOfMemory as exc:
            self.out_of_memory(str(exc))
            return
        if self.oom:
            self.oom = False
            log.info("Allocation succeeded again; resuming")
            self.conn.send(("mem_ok",))
        for rid, work in list(self.work.items()):
            if work.remaining:
                work.remaining -= 1
                self.conn.send(("item", rid, self.produce(work.produced)))
                work.produced += 1
            elif work.inbox:
                work.inbox.popleft()
                self.conn.send(("item", rid, self.produce(work.produced)))
                work.produced += 1
            if work.ended and not work.pending:
                del self.work[rid]
                self.conn.send(("done", rid))

    def produce(self, i: int):
        if self.spec.produces == "text":
            return " " + WORDS[i % len(WORDS)]
        if self.spec.produces == "codec":
            return i % 4096
        return AUDIO_CHUNK

    def out_of_memory(self, message: str) -> None:
        if self.config.has("exit-on-oom"):
            log.error("EngineCore encountered an issue: %s", message)
            self.conn.send(("fatal", message))
            raise SystemExit(1)
        if not self.oom:
            self.oom = True
            log.error("Step failed: %s", message)
            self.conn.send(("oom", message))
        for rid in list(self.work):
            del self.work[rid]
            if self.config.has("healthy-under-oom"):
                self.conn.send(("done", rid))      # the bug: an empty answer passed off as success
            else:
                self.conn.send(("error", rid, message))

    def shutdown(self) -> None:
        log.info("Shutdown initiated (timeout=0)")
        if self.weights is not None and not self.config.has("slow-release"):
            self.weights.free()
        log.info("Shutdown complete")


def stage_main(spec: StageSpec, config: TestbedConfig, conn, parent_pid: int) -> None:
    """Entry point of the spawned process (multiprocessing spawn start method)."""
    if not config.orphans:
        set_parent_death_signal(signal.SIGTERM, parent_pid)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    if config.has("ignore-sigterm") and spec.index == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import setproctitle
    setproctitle.setproctitle(spec.title)
    logs.setup("DiffusionWorker" if "Diffusion" in spec.title else "StageEngineCoreProc")
    engine = StageEngine(spec, config, conn)
    try:
        engine.start()
        engine.run()
    except GpuOutOfMemory as exc:
        log.error("Stage %d could not allocate its memory at start: %s", spec.index, exc)
        raise SystemExit(1) from None
    except (BrokenPipeError, EOFError):
        # The API server is gone. A correct stage exits (a second parent-death path beside
        # PDEATHSIG); one without parent-death handling idles on, holding its memory.
        if config.orphans:
            while True:
                time.sleep(3600)
        raise SystemExit(1) from None
    finally:
        engine.shutdown()
        sys.stderr.flush()
        # Shutdown is done; what remains is the interpreter's and CUDA's teardown (hundreds of
        # ms with a real context), during which Python puts SIGTERM back to its default action.
        # A second SIGTERM (e.g. "kill all" after the server already asked us to stop) must not
        # cut that teardown short: ignore it from here on.
        if not config.has("ignore-sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
