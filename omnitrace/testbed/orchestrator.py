"""The API server's side of the stages: spawn them, route requests through them, notice when one
dies or runs out of memory, shut them down one by one.

Runs on the server's event loop, in its main thread: stages are spawned from that thread, so their
PR_SET_PDEATHSIG is tied to a thread that lives as long as the server. Pipes and process sentinels
are watched with loop.add_reader: a stage's death is seen the moment its sentinel closes (it closes
at exit, before the stage is reaped), not at the next poll.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
from dataclasses import dataclass, field

from omnitrace.testbed.config import StageSpec, TestbedConfig
from omnitrace.testbed.stage import stage_main

log = logging.getLogger("orchestrator.py")
pool_log = logging.getLogger("stage_pool.py")
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class EngineUnavailable(Exception):
    def __init__(self, status: int, message: str, code: str = "engine_unavailable"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Stage:
    spec: StageSpec
    process: multiprocessing.process.BaseProcess
    conn: object
    ready: asyncio.Future | None      # set by start(), on the event loop
    exited: asyncio.Event | None = None
    alive: bool = True
    oom: str | None = None
    exitcode: int | None = None


@dataclass
class Request:
    """Events for the HTTP handler: ("text", str) ("audio", bytes) ("done",) ("error", status, msg)."""
    rid: str
    route: list[int]
    wants_text: bool
    wants_audio: bool
    oom_status: int = 500   # what this request answers when the engine cannot get GPU memory
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def fail(self, status: int, message: str) -> None:
        self.events.put_nowait(("error", status, message))


class Orchestrator:
    def __init__(self, config: TestbedConfig):
        self.config = config
        self.stages: list[Stage] = []
        self.requests: dict[str, Request] = {}
        self.ids = itertools.count(1)
        self.shutting_down = False
        self.fatal: str | None = None
        self.on_fatal = lambda: None        # the server sets it: exit the whole process (exit-on-oom)
        self._shutdown_task: asyncio.Task | None = None

    # -- start ----------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the stage processes; called from the main thread before the server imports its
        web stack, so the stages boot while it does."""
        ctx = multiprocessing.get_context("spawn")   # spawn also starts the resource tracker
        for spec in self.config.stages:
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=stage_main, name=spec.title, daemon=True,
                                  args=(spec, self.config, child_end, os.getpid()))
            process.start()
            child_end.close()   # so the stage's death reads as EOF here
            self.stages.append(Stage(spec, process, parent_end, None))

    async def start(self, timeout_s: float = 60.0) -> None:
        """Watch the spawned stages from the event loop and wait until each said ready."""
        loop = asyncio.get_running_loop()
        if not self.stages:
            self.spawn()
        for stage in self.stages:
            stage.ready = loop.create_future()
            stage.exited = asyncio.Event()
            loop.add_reader(stage.conn.fileno(), self._receive, stage)
            loop.add_reader(stage.process.sentinel, self._exited, stage)
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready for s in self.stages)), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"stages not ready within {timeout_s:.0f} s") from None
        log.info("[Orchestrator] %d stage(s) ready: %s", len(self.stages),
                 ", ".join(f"{s.spec.index}:{s.process.pid}" for s in self.stages))

    # -- state the server reads -----------------------------------------------------------
    def dead_stages(self) -> list[Stage]:
        return [s for s in self.stages if not s.alive]

    def oom_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.oom]

    def health(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "server is shutting down"
        if self.dead_stages() and not self.config.has("stale-health"):
            return False, f"stage {self.dead_stages()[0].spec.index} is dead"
        if self.oom_stages() and not self.config.has("healthy-under-oom"):
            return False, f"engine cannot allocate GPU memory: {self.oom_stages()[0].oom}"
        return True, "ok"

    # -- requests -------------------------------------------------------------------------
    def submit(self, route: list[int], n: int, wants_text: bool, wants_audio: bool,
               oom_status: int = 500) -> Request:
        """Start a request through `route` (stage indices; the first produces n items).
        Raises EngineUnavailable when it cannot be served; it is never queued to hang."""
        if self.shutting_down:
            raise EngineUnavailable(503, "server is shutting down", "shutting_down")
        if self.dead_stages():
            raise EngineUnavailable(503, ENGINE_DEAD, "engine_dead")
        oom = [self.stages[i].oom for i in route if self.stages[i].oom]
        if oom and not self.config.has("healthy-under-oom"):
            raise EngineUnavailable(oom_status, oom[0], "out_of_memory")
        req = Request(f"req-{next(self.ids)}", route, wants_text, wants_audio, oom_status)
        self.requests[req.rid] = req
        self._send(route[0], ("submit", req.rid, n))
        for i in route[1:]:
            self._send(i, ("submit", req.rid, None))
        return req

    def abort(self, req: Request) -> None:
        if self.requests.pop(req.rid, None) is not None:
            for i in req.route:
                self._send(i, ("abort", req.rid))

    def crash_stage(self, message: str) -> None:
        """crash-on-bad-input: hand a bad request to the first stage, which dies of it."""
        self._send(0, ("crash", message))

    def fail_all(self, status: int, message: str) -> None:
        for req in list(self.requests.values()):
            self.abort(req)
            req.fail(status, message)

    def _send(self, index: int, message: tuple) -> None:
        stage = self.stages[index]
        if stage.alive:
            try:
                stage.conn.send(message)
            except OSError:
                pass   # it just died; its sentinel will tell

    # -- messages from stages -------------------------------------------------------------
    def _receive(self, stage: Stage) -> None:
        try:
            while stage.conn.poll():
                self._handle(stage, *stage.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(stage.conn.fileno())

    def _handle(self, stage: Stage, kind: str, *args) -> None:
        index = stage.spec.index
        if kind == "ready":
            stage.ready.done() or stage.ready.set_result(args[0])
        elif kind == "oom":
            stage.oom = args[0]
        elif kind == "mem_ok":
            stage.oom = None
        elif kind == "fatal":
            self.fatal = args[0]
        elif kind in ("item", "done", "error"):
            req = self.requests.get(args[0])
            if req is not None:
                self._route(req, index, kind, args[1:])

    def _route(self, req: Request, index: int, kind: str, payload: tuple) -> None:
        position = req.route.index(index)
        downstream = req.route[position + 1] if position + 1 < len(req.route) else None
        if kind == "error":
            # A request admitted just before its stage ran out of memory fails at the step; it
            # answers as one refused under OOM does (speech-400-under-oom: 400), not always 500.
            self.abort(req)
            req.fail(req.oom_status if self.stages[index].oom else 500, payload[0])
        elif kind == "item":
            produces = self.stages[index].spec.produces
            if produces == "text" and req.wants_text:
                req.events.put_nowait(("text", payload[0]))
            elif produces == "audio" and req.wants_audio:
                req.events.put_nowait(("audio", payload[0]))
            if downstream is not None:
                self._send(downstream, ("feed", req.rid, payload[0]))
        elif downstream is not None:
            self._send(downstream, ("end", req.rid))
        else:
            del self.requests[req.rid]
            req.events.put_nowait(("done",))

    # -- deaths ---------------------------------------------------------------------------
    def _exited(self, stage: Stage) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(stage.process.sentinel)
        stage.alive = False
        stage.exited.set()
        if not stage.ready.done():
            stage.ready.set_exception(RuntimeError(f"stage {stage.spec.index} exited at start"))
        if not self.config.has("zombie-stage"):
            self._reap(stage, attempts=50)
        if self.shutting_down:
            return
        log.error("[Orchestrator] Stage %d (pid %d) died", stage.spec.index, stage.process.pid)
        if not self.config.has("hang-on-stage-death"):
            self.fail_all(500, ENGINE_DEAD)
        if self.fatal is not None:
            self.on_fatal()   # exit-on-oom: one stage's failure taken as fatal for the server

    def _reap(self, stage: Stage, attempts: int) -> None:
        # The sentinel closes as the stage exits, a moment before it can be waited for.
        stage.process.join(0)
        stage.exitcode = stage.process.exitcode
        if stage.exitcode is not None:
            log.info("[Orchestrator] Stage %d (pid %d) reaped, exit code %d", stage.spec.index,
                     stage.process.pid, stage.exitcode)
        elif attempts > 0:
            asyncio.get_running_loop().call_later(0.01, self._reap, stage, attempts - 1)

    # -- shutdown -------------------------------------------------------------------------
    def begin_shutdown(self) -> asyncio.Task:
        """Idempotent; the server calls it from its signal handler and from lifespan shutdown."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown())
        return self._shutdown_task

    async def _shutdown(self) -> None:
        logging.getLogger("omni_base.py").info("[AsyncOmni] Shutting down")
        self.shutting_down = True
        if not self.config.has("hang-inflight"):
            self.fail_all(503, "server is shutting down")
        log.info("[Orchestrator] Received shutdown signal")
        log.info("[Orchestrator] Shutting down all %d client(s)", len(self.stages))
        for stage in self.stages:
            await self._stop(stage)
            pool_log.info("[StagePool] Stage %d replica 0 shut down", stage.spec.index)

    async def _stop(self, stage: Stage) -> None:
        self._send(stage.spec.index, ("shutdown",))
        for escalate in (stage.process.terminate, stage.process.kill, None):
            try:
                await asyncio.wait_for(stage.exited.wait(), 5.0)
                return
            except asyncio.TimeoutError:
                if escalate is None:
                    return
                log.warning("[Orchestrator] Stage %d did not exit in time; escalating",
                            stage.spec.index)
                escalate()
