"""The scenario driver: one matrix row, start to finish, as the command of one recording.

    omnitrace record -o row.jsonl -- python -m omnitrace.inject.scenario ROW --serve CMD ...

Phases (each printed to stderr as `omnitrace-phase: NAME`, which the runner's live display reads):
start the server and wait for /health 200; for load rows start load and wait until a request is in
flight; inject (signal or OOM hog); observe until the outcome is settled or the row's window ends;
then end the scenario mark and stop whatever is left, reporting it. Marks go over OTLP to the
recorder (docs/marks.md). Every piece is bounded: requests time out, the hog holds for at most the
window, and a signal to the driver moves it straight to clean-up.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from opentelemetry.trace import Status, StatusCode

from omnitrace.errors import OmnitraceError
from omnitrace.events import signal_name
from omnitrace.inject import abnormal, marks, oom, probes
from omnitrace.inject.container_serve import ContainerServe
from omnitrace.inject.gpu_holders import gpu_held_by, open_gpu_backend
from omnitrace.inject.input_variants import VARIANTS
from omnitrace.inject.load import (Load, RequestShape, discover_model, kinds_of, request_spec,
                                   summary_table)
from omnitrace.inject.server import (DownSince, Server, ServerFailed, become_subreaper, child_env,
                                     expand, health_status)
from omnitrace.inject.roles import matrix_patterns
from omnitrace.inject.signals import inject_signal
from omnitrace.inject.supervise import Supervisor, SupervisorSettings

SETTLE_GRACE_S = 1.0   # keep observing this long after the outcome settled (GPU release, probes)
OOM_DWELL_S = 5.0      # an OOM row holds the hog this long after health turned: the server must
                       # survive a sustained OOM, and on a real GPU its collapse takes seconds
HEALTH_POLL_S = 0.25   # the driver's own /health polls (for settling): at most 4 Hz, and never
                       # more often than the recording probes (health_poll_s)
SURVIVOR_WATCH_S = 5.0  # a supervised row that recovered beside old survivors watches them this
                        # long more: the verdicts are decided, the recording shows if they leave


@dataclass
class Plan:
    row: str
    fault: str              # SIGKILL | SIGTERM | SIGINT | oom
    target: str             # worker | serve | all | pattern | gpu
    load: bool
    observe_s: float
    serve: str
    port: int
    url: str
    startup_timeout_s: float = 120.0
    load_kind: str = "mix"
    load_rate: float = 4.0
    load_requests: int = 12
    load_concurrency: int = 8
    hog_ratio: float = 0.92
    probe_after_s: float | None = None   # one chat request this long after the fault
    shape: RequestShape = RequestShape()  # how long each load/probe generation runs
    in_flight_timeout_s: float = 30.0
    matrix: str | None = None             # whose role patterns pick "worker" (verify reads them too)
    unavailable_hold_s: float = 0.0       # a worker row watches "unavailable" this long before settling
    cidfile: str | None = None            # a container serve writes its id here (the runner's)
    input: str | None = None              # fault "input": the abnormal request's variant
    recovery_keyword: str | None = None   # fault "input": the recovery answer must hold it
    input_recovery_s: float = abnormal.RECOVERY_TIMEOUT_S   # fault "input": the recovery's timeout
    supervise: SupervisorSettings | None = None   # run the server under supervisord (recovery rows)
    recovery_s: float | None = None       # a supervised row that could not recover settles after it


@dataclass
class Outcome:
    row: str
    phases: dict[str, float] = field(default_factory=dict)   # phase -> seconds since driver start
    server_pid: int | None = None
    fault_pids: list[int] = field(default_factory=list)
    settled: bool = False
    leftovers: list[str] = field(default_factory=list)
    load: dict[str, int] = field(default_factory=dict)        # end reason -> count
    probes: list[str] = field(default_factory=list)
    absent_endpoints: dict[str, int] = field(default_factory=dict)  # kind -> status before the fault
    container: dict = field(default_factory=dict)  # a container serve: runtime, id, name, init...
    dropped: dict[int, str] = field(default_factory=dict)  # pid -> why the kernel drops the signal
    error: str | None = None


class Interrupted(Exception):
    pass


class Driver:
    def __init__(self, plan: Plan):
        self.plan, self.t0 = plan, time.monotonic()
        self.outcome = Outcome(plan.row)
        argv = expand(plan.serve, plan.port)
        # Supervised, the process started is supervisord, and the server its child (supervise.py);
        # a container command under supervisord is run as it is (not attached as a container).
        self.supervisor = Supervisor(argv, plan.supervise) if plan.supervise else None
        self.container = None if self.supervisor else ContainerServe.of(argv, plan.cidfile)
        command = self.supervisor.command() if self.supervisor else \
            self.container.argv if self.container else argv
        # subtree_is_server: everything the server forks stays below this subreaper (server.py)
        self.server = Server(command, plan.url, subtree_is_server=True)
        self.old_members: set[int] = set()   # the tree at the fault (supervised: the old incarnation)
        self.recovered_at: float | None = None
        self.load: Load | None = None
        self.load_thread: threading.Thread | None = None
        self.hog: subprocess.Popen | None = None
        self.probes_done = threading.Event()
        self.stop = threading.Event()
        self.down = DownSince()   # /health's current run of non-2xx answers
        self.health_poll_s = health_poll_s()
        self.model: str | None = None   # what GET /v1/models named once the server was healthy
        self.absent: dict[str, int] = {}  # request kinds the server has no endpoint for
        # Read now, not at the fault: loading the matrix imports verify's modules, and with the load
        # thread streaming that took 6-8 s against real vLLM, in which the streams caught in flight
        # ran to completion before the signal was sent.
        self.patterns = matrix_patterns(plan.matrix)
        open_gpu_backend()   # now, for the same reason

    def phase(self, name: str) -> None:
        self.outcome.phases[name] = round(time.monotonic() - self.t0, 3)
        print(f"omnitrace-phase: {name}", file=sys.stderr, flush=True)
        if self.stop.is_set() and name not in ("cleanup", "done"):
            raise Interrupted()

    # ------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        p = self.plan
        scenario = marks.tracer().start_span(marks.SCENARIO_SPAN, attributes=marks.clean(
            marks.scenario_attributes(p.row, server_url=p.url)))
        try:
            self.phase("starting")
            pid = self.server.start(child_env(OMNITRACE_SCENARIO=p.row, OMNITRACE_SERVER_URL=p.url))
            if self.container is not None:   # the server's root is the container's init
                pid = self.attach_container()
            self.outcome.server_pid = pid
            scenario.set_attributes({"omnitrace.server.pid": pid, "omnitrace.server.url": p.url})
            marks.announce_server(pid, p.url, p.row)
            self.server.wait_healthy(p.startup_timeout_s)
            if self.supervisor:   # the server is supervisord's child, not supervisord
                self.outcome.server_pid = self.supervised_pid()
                scenario.set_attribute("omnitrace.server.pid", self.outcome.server_pid)
            self.model = discover_model(p.url)  # now: after the fault the call could hang
            self.check_endpoints()
            self.phase("healthy")
            if p.load and self.load_applies():
                self.start_load()
            self.phase("injecting")
            self.inject()
            self.phase("observing")
            self.outcome.settled = self.observe()
        except (OmnitraceError, Interrupted) as exc:
            self.outcome.error = str(exc) or "interrupted"
            scenario.set_status(Status(StatusCode.ERROR, self.outcome.error))
        finally:
            scenario.end()        # the window closes before clean-up: its kills are not the fault's
            marks.flush()
            self.phase("cleanup")
            self.cleanup()
            self.phase("done")
        return self.outcome

    def attach_container(self) -> int:
        """The container's init, by host pid; its details go to the outcome even when the
        container is refused (a port it does not publish), so the outcome names it. The plan's
        URL moves to the host port the container publishes (one the runtime picked, `-p {port}`):
        every probe, load request, mark and health poll from here on goes there."""
        try:
            init_pid = self.container.attach(self.server, self.plan.startup_timeout_s).init_pid
            self.plan.url = self.server.url
            return init_pid
        finally:
            self.outcome.container = self.container.details()

    def kinds_used(self) -> tuple[str, ...]:
        p = self.plan
        kinds = list(kinds_of(p.load_kind)) if p.load else []
        if p.target in ("worker", "gpu") or p.fault in ("oom", "input") or \
                p.probe_after_s is not None or p.supervise:
            kinds.append("chat")
        if p.fault == "oom":
            kinds.append("speech")
        return tuple(dict.fromkeys(kinds))

    def check_endpoints(self) -> None:
        """Ask once, while healthy, which request kinds the server has endpoints for, and say
        plainly which do not apply, so a 404 is never taken for the server's answer to a fault."""
        self.absent = probes.absent_endpoints(self.plan.url, self.kinds_used(), self.model,
                                              self.plan.row)
        self.outcome.absent_endpoints = dict(self.absent)
        for kind, status in self.absent.items():
            print(f"omnitrace: {self.plan.url}{request_spec(kind, None)[1]} answered {status} before "
                  f"the fault: {kind} requests do not apply to this server; rules resting on them "
                  "are not decided", file=sys.stderr, flush=True)

    def load_applies(self) -> bool:
        if all(k in self.absent for k in kinds_of(self.plan.load_kind)):
            print("omnitrace: no load request kind applies to this server: the fault is injected "
                  "with nothing in flight (inflight-fail-fast cannot be decided)", file=sys.stderr,
                  flush=True)
            return False
        return True

    def start_load(self) -> None:
        p = self.plan
        self.phase("loading")
        self.load = Load(p.url, p.load_kind, p.load_rate, p.load_requests, p.load_concurrency,
                         timeout_s=probes.PROBE_TIMEOUT_S, model=self.model, scenario=p.row,
                         shape=p.shape, absent=frozenset(self.absent))
        self.load_thread = self.load.run_in_thread()
        self.wait_in_flight()

    def wait_in_flight(self) -> None:
        """Inject only while a stream is open: it has its first byte and not its end, so the
        server is certainly serving it at the fault. A fast model can answer every request before
        one is caught open; then the row cannot test what it claims, and says so."""
        load = self.load
        if load.wait_until(lambda l: l.streaming >= 1 or l.started == l.requests and l.in_flight == 0,
                           self.plan.in_flight_timeout_s) and load.streaming >= 1:
            return
        done = len(load.results)
        longest = max((r.duration_s for r in load.results), default=0.0)
        raise ServerFailed(
            f"no request was in flight to inject under: {done} of {load.requests} load requests "
            f"ended (longest {longest:.2f} s) and none was streaming within "
            f"{self.plan.in_flight_timeout_s:.0f} s; make requests longer (load_settings.max_tokens "
            f"with ignore_eos in the matrix, or --max-tokens/--ignore-eos)")

    def inject(self) -> None:
        p = self.plan
        self.server.remember_tree()
        self.old_members = set(self.server.seen) - {self.server.proc.pid} if self.supervisor \
            else set(self.server.seen)
        if p.fault == "oom":
            self.start_hog()
            return
        if p.fault == "input":
            self.send_input()
            return
        fault = inject_signal(self.outcome.server_pid, p.target, p.fault, scenario=p.row,
                              server_url=p.url, patterns=self.patterns)
        self.outcome.fault_pids = fault.pids
        self.outcome.dropped = fault.dropped
        for why in fault.dropped.values():
            print(f"omnitrace: {why}", file=sys.stderr, flush=True)
        self.check_in_flight(fault.t_start_ns / 1e9)   # the first signal's time

    def check_in_flight(self, fault_t: float) -> None:
        """A stream seen open just before the fault can end in the instant before the signal
        lands; an under-load row with nothing in flight at the fault must say so, not pass for
        one that was tested."""
        if self.load is None or self.load.open_at(fault_t) > 0:
            return
        raise ServerFailed("no request was in flight at the fault: every load request had "
                           "ended; make requests longer (load_settings.max_tokens with ignore_eos)")

    def send_input(self) -> None:
        """The abnormal request, inside its input mark; answered (or given up on) on return.
        The client waits as long as the recovery may take: a bad request that hangs past
        input_answer_s is then seen hanging, not cut short by the client."""
        p = self.plan
        result = abnormal.send_input(p.url, p.input, self.model, scenario=p.row,
                                     server_pid=self.outcome.server_pid,
                                     timeout_s=p.input_recovery_s)
        self.note_probes([result])

    def run_recovery(self) -> None:
        """The next valid request after the abnormal one (the input-recovery rule's evidence)."""
        try:
            result, found = abnormal.send_recovery(self.plan.url, self.model,
                                                   self.plan.recovery_keyword,
                                                   self.plan.input_recovery_s)
            self.note_probes([result])
            if found is not None:
                self.outcome.probes.append(f"keyword {self.plan.recovery_keyword!r}: "
                                           f"{'found' if found else 'missing'}")
        finally:
            self.probes_done.set()

    def start_hog(self) -> None:
        self.hog = oom.start_hog(self.plan.hog_ratio, hold_s=self.plan.observe_s + 30,
                                 scenario=self.plan.row, server_url=self.plan.url,
                                 server_pid=self.outcome.server_pid)
        self.server.foreign.add(self.hog.pid)  # the driver's own child, not the server's
        self.outcome.fault_pids = [self.hog.pid]

    # ------------------------------------------------------------------------------------------
    def observe(self) -> bool:
        """Poll until the row's outcome is settled (then a short grace) or the window ends."""
        p = self.plan
        watchers = [threading.Thread(target=self.watch_health, daemon=True)]
        if p.fault == "input":
            watchers.append(threading.Thread(target=self.run_recovery, daemon=True))
        elif self.supervisor:
            watchers.append(threading.Thread(target=self.await_recovery, daemon=True))
        elif p.target in ("worker", "gpu") or p.fault == "oom":
            watchers.append(threading.Thread(target=self.run_probes, daemon=True))
        elif p.probe_after_s is not None:
            watchers.append(threading.Thread(target=self.late_probe, daemon=True))
        else:
            self.probes_done.set()
        for w in watchers:
            w.start()
        deadline = self.t0 + self.outcome.phases["observing"] + p.observe_s
        settled_at = None
        while time.monotonic() < deadline and not self.stop.is_set():
            self.server.remember_tree()
            if settled_at is None and self.settled():
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at >= SETTLE_GRACE_S:
                return True
            time.sleep(0.1)
        return False

    def settled(self) -> bool:
        load_done = self.load_thread is None or not self.load_thread.is_alive()
        if not load_done or not self.probes_done.is_set():
            return False
        if self.plan.fault == "input":
            # answered and recovered (or not): nothing more is coming. The grace that follows
            # lets the recorder's probes watch /health after the recovery.
            return not self.server.zombies()
        if self.supervisor:
            return self.recovery_settled()
        # Settled includes reaped: a dead process left a zombie is the outcome still unfolding
        # (a correct parent reaps at once; one that never does must be watched for the window).
        if self.plan.target in ("serve", "all"):
            return (not self.server.alive() and not self.server.zombies() and not self.gpu_held()
                    and self.unavailable_for(self.plan.unavailable_hold_s))
        if self.plan.fault == "oom":
            targets_gone = self.oom_dwelled()  # the hog is not the server's: it is never "gone"
        else:
            alive = {p.pid for p in self.server.alive()}
            targets_gone = not alive.intersection(self.outcome.fault_pids)
        # "Unavailable and stays so" is a claim about a duration: watch the whole hold.
        return (targets_gone and self.unavailable_for(self.plan.unavailable_hold_s)
                and not self.server.zombies())

    # -- supervised rows (recovery under supervisord) -----------------------------------------
    def supervised_pid(self) -> int:
        """The server supervisord started, once supervisord counts it as started (RUNNING, after
        startsecs): a fault before that would be a failed start to it, retried only startretries
        times, not the crash of a running server that autorestart restarts."""
        deadline = time.monotonic() + self.plan.supervise.startsecs + 30
        while time.monotonic() < deadline:
            state = self.supervisor.state()
            if state.running and state.current:
                return state.current
            if state.fatal or self.server.proc.poll() is not None or self.stop.is_set():
                break
            self.stop.wait(0.1)
        raise ServerFailed(f"supervisord did not report the server RUNNING (its log: "
                           f"{self.supervisor.log}); check the row's supervise.startsecs")

    def await_recovery(self) -> None:
        """Wait for supervisord's new server to answer, then send the first request after the
        recovery. Answering means /health 2xx; with health unwatched (--health-rate 0) nothing
        asks /health, and a chat request each second is the sign of life instead."""
        try:
            old = self.outcome.server_pid
            while not self.stop.is_set():
                state = self.supervisor.state()
                if state.current not in (None, old) and self.new_server_answers():
                    break
                if state.fatal:
                    return   # supervisord gave up: could not recover
                self.stop.wait(self.health_poll_s or 1.0)
            else:
                return
            self.recovered_at = time.monotonic()
            self.note_probes(probes.probe(self.plan.url, "chat", model=self.model,
                                          scenario=self.plan.row))
        finally:
            self.probes_done.set()

    def new_server_answers(self) -> bool:
        if self.health_poll_s:
            status = health_status(self.plan.url)
            return status is not None and 200 <= status < 300
        results = probes.probe(self.plan.url, "chat", model=self.model, scenario=self.plan.row)
        self.note_probes(results)
        return results[0].end_reason == "completed"

    def recovery_settled(self) -> bool:
        """Recovered and the first request answered: settled once the old incarnation is gone
        (or has been watched SURVIVOR_WATCH_S beside the new one). Not recovered: only once the
        recovery limit has passed, since a limit not passed decides nothing."""
        observing_s = time.monotonic() - self.t0 - self.outcome.phases["observing"]
        if self.recovered_at is None:
            return self.plan.recovery_s is not None and observing_s >= self.plan.recovery_s
        alive = {p.pid for p in self.server.alive()}
        return (not alive & self.old_members
                or time.monotonic() - self.recovered_at >= SURVIVOR_WATCH_S)

    def oom_dwelled(self) -> bool:
        return self.unavailable_for(OOM_DWELL_S)

    def unavailable_for(self, seconds: float) -> bool:
        """/health has answered non-2xx (or nothing) without a break for at least `seconds`.
        With health unwatched (--health-rate 0) the hold counts from the fault instead."""
        if not self.health_poll_s:
            return time.monotonic() - self.t0 - self.outcome.phases["observing"] >= seconds
        return self.down.held_for(seconds)

    def gpu_held(self) -> bool:
        """Whether a process of the server's tree still holds GPU memory (memory can outlive its
        process: the release is part of the outcome)."""
        return gpu_held_by(set(self.server.seen))  # the root is in it from start()

    def watch_health(self) -> None:
        """For the whole window: when the current run of non-2xx answers began (None while
        healthy), so a health endpoint that flaps back to 2xx starts the hold again."""
        while self.health_poll_s and not self.stop.is_set():
            self.down.note(health_status(self.plan.url))
            time.sleep(self.health_poll_s)

    def run_probes(self) -> None:
        """Worker kill: one request at a time until one fails, then 4 at once (upstream's check).
        OOM: one chat and one speech request, which must answer >= 500."""
        try:
            url, row = self.plan.url, self.plan.row
            if self.plan.fault == "oom":
                for kind in ("chat", "speech"):
                    if kind not in self.absent:
                        self.note_probes(probes.probe(url, kind, model=self.model, scenario=row))
                return
            if "chat" in self.absent:
                return
            deadline = time.monotonic() + 31
            while time.monotonic() < deadline and not self.stop.is_set():
                results = probes.probe(url, "chat", model=self.model, scenario=row)
                self.note_probes(results)
                if any(probes.failed(r) for r in results):
                    break
                time.sleep(0.5)
            self.note_probes(probes.probe(url, "chat", count=4, model=self.model, scenario=row))
        finally:
            self.probes_done.set()

    def late_probe(self) -> None:
        """A new request after the stop-accepting grace: a stopped server must not serve it."""
        try:
            if "chat" not in self.absent and not self.stop.wait(self.plan.probe_after_s):
                self.note_probes(probes.probe(self.plan.url, "chat", model=self.model,
                                              scenario=self.plan.row))
        finally:
            self.probes_done.set()

    def note_probes(self, results) -> None:
        self.outcome.probes += [f"{r.kind}:{r.status or r.end_reason}:{r.duration_s:.3f}s"
                                for r in results]

    # ------------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        self.stop.set()
        if self.hog is not None:
            oom.stop_hog(self.hog)
        if self.load is not None:
            self.load.cancel()
            self.load_thread.join(10)
            counts: dict[str, int] = {}
            for r in self.load.results:
                counts[r.end_reason] = counts.get(r.end_reason, 0) + 1
            self.outcome.load = counts
            print(summary_table(self.load.results), file=sys.stderr)
        # Serve and all rows: anything alive now outlived the window, a leftover. Worker and OOM
        # rows leave a (correctly) degraded server running: stopping it is not a finding, only
        # what survives its SIGTERM is.
        expected_gone = self.plan.target in ("serve", "all") and self.plan.fault != "input"
        before = [f"{p.pid} {p.name()}" for p in self.server.alive() if expected_gone and (
            not self.supervisor or p.pid in self.old_members)]   # supervised: the new one stays
        killed = self.server.stop()
        self.outcome.leftovers = before if self.supervisor else (before or killed)
        if self.supervisor:
            self.supervisor.close()
        if self.container is not None and self.container.remove():
            print(f"omnitrace: removed {self.container.runtime} container "
                  f"{self.container.label()}", file=sys.stderr, flush=True)
        for line in self.outcome.leftovers:
            print(f"omnitrace: leftover process {line} (killed)", file=sys.stderr, flush=True)


def health_poll_s() -> float | None:
    """Seconds between the driver's /health polls; None when the recording probes nothing
    (`record --health-rate 0` exports OMNITRACE_HEALTH_RATE_HZ=0): the driver must not probe the
    server either, or it would be observed after all."""
    rate = float(os.environ.get("OMNITRACE_HEALTH_RATE_HZ") or 1 / HEALTH_POLL_S)
    return max(HEALTH_POLL_S, 1 / rate) if rate > 0 else None


def parse(argv: list[str]) -> tuple[Plan, str | None]:
    ap = argparse.ArgumentParser(prog="python -m omnitrace.inject.scenario",
                                 description="Run one matrix row against a server command.")
    ap.add_argument("row")
    ap.add_argument("--fault", required=True, help="SIGKILL, SIGTERM, SIGINT, oom or input")
    ap.add_argument("--target", required=True)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--observe", type=float, required=True, help="the row's window, seconds")
    ap.add_argument("--serve", required=True, help="server command; {port} is replaced")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--url", default=None)
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--load-kind", default="mix")
    ap.add_argument("--probe-after", type=float, default=None,
                    help="send one chat request this many seconds after the fault")
    ap.add_argument("--report", default=None, help="write the outcome as JSON here")
    ap.add_argument("--max-tokens", type=int, default=RequestShape.max_tokens,
                    help="max_tokens of each load request")
    ap.add_argument("--min-tokens", type=int, default=None)
    ap.add_argument("--ignore-eos", action="store_true", help="ask the server to generate past EOS")
    ap.add_argument("--load-rate", type=float, default=Plan.load_rate)
    ap.add_argument("--load-requests", type=int, default=Plan.load_requests)
    ap.add_argument("--load-concurrency", type=int, default=Plan.load_concurrency)
    ap.add_argument("--matrix", default=None, help="matrix file whose role patterns name workers")
    ap.add_argument("--unavailable-hold", type=float, default=0.0,
                    help="seconds /health must stay non-2xx before a worker row settles")
    ap.add_argument("--cidfile", default=None,
                    help="a container serve: where its runtime writes the container's id")
    ap.add_argument("--input", default=None, choices=sorted(VARIANTS),
                    help="with --fault input: the abnormal request to send")
    ap.add_argument("--recovery-keyword", default=None,
                    help="with --fault input: the recovery answer must contain it")
    ap.add_argument("--input-recovery", type=float, default=Plan.input_recovery_s,
                    help="with --fault input: seconds the recovery request may take")
    ap.add_argument("--supervise", action="store_true",
                    help="run the server under supervisord (a recovery row)")
    ap.add_argument("--startsecs", type=float, default=SupervisorSettings.startsecs)
    ap.add_argument("--startretries", type=int, default=SupervisorSettings.startretries)
    ap.add_argument("--recovery-limit", type=float, default=None,
                    help="a supervised row that did not recover settles after this many seconds")
    a = ap.parse_args(argv)
    if (a.fault == "input") != (a.input is not None):
        ap.error("--fault input and --input VARIANT go together")
    url = (a.url or "http://127.0.0.1:{port}").replace("{port}", str(a.port))
    plan = Plan(a.row, a.fault, a.target, a.load, a.observe, a.serve, a.port, url,
                startup_timeout_s=a.startup_timeout, load_kind=a.load_kind,
                load_rate=a.load_rate, load_requests=a.load_requests,
                load_concurrency=a.load_concurrency, probe_after_s=a.probe_after,
                shape=RequestShape(a.max_tokens, a.min_tokens, a.ignore_eos),
                matrix=a.matrix, unavailable_hold_s=a.unavailable_hold, cidfile=a.cidfile,
                input=a.input, recovery_keyword=a.recovery_keyword,
                input_recovery_s=a.input_recovery,
                supervise=SupervisorSettings(a.startsecs, a.startretries) if a.supervise else None,
                recovery_s=a.recovery_limit)
    return plan, a.report


# The load thread streams hundreds of SSE events a second and holds the GIL between them; each
# /proc read the injector makes (psutil, to find and signal its target) gives the GIL up and waited
# up to the 5 ms default switch interval to get it back: against real vLLM a SIGINT reached the
# server 4.4 s after a stream was caught open. A 0.5 ms interval keeps the fault prompt.
GIL_SWITCH_S = 0.0005


def main(argv: list[str] | None = None) -> int:
    plan, report = parse(sys.argv[1:] if argv is None else argv)
    sys.setswitchinterval(GIL_SWITCH_S)
    become_subreaper()
    driver = Driver(plan)

    def interrupt(signum, _frame):
        if not driver.stop.is_set():  # the first signal starts clean-up; later ones wait for it
            driver.stop.set()
            raise Interrupted(f"interrupted by {signal_name(signum)}")
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        outcome = driver.run()
    except Interrupted as exc:
        driver.outcome.error = str(exc)
        outcome = driver.outcome
    if report:
        with open(report, "w") as f:
            json.dump(asdict(outcome), f, indent=1)
    if outcome.error:
        print(f"omnitrace: {plan.row}: {outcome.error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
