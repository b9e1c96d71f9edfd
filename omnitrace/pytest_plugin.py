"""pytest plugin (entry point `pytest11`): fault-injection tests whose evidence lands on a timeline.

    @pytest.mark.omnitrace(row="under-load/sigterm/serve")
    def test_sigterm(omnitrace_server, omnitrace_load, omnitrace_inject):
        omnitrace_load(kind="chat-stream").wait_in_flight()
        omnitrace_inject.signal("serve", "TERM")
        assert omnitrace_server.wait_gone(90)

    omnitrace_inject.input("malformed-json") sends an abnormal request (fault: input rows),
    omnitrace_inject.recovery() the valid one after it.

Run under the recorder and verify, with no extra flags:

    sudo omnitrace record -o run.jsonl -- pytest tests/reliability --omnitrace-serve 'vllm serve ... --port {port}'
    omnitrace verify run.jsonl

The marker opens a scenario mark (a span, docs/marks.md) before the server starts and closes it
before the server is stopped, so clean-up kills never count as the fault's effects. Faults, load
requests and health polls are spans too, all sent with the OTel SDK to the recorder's receiver.
Every process a fixture starts is stopped at teardown, and every wait has a deadline.
"""
from __future__ import annotations

import functools
import os

import pytest

from omnitrace.errors import OmnitraceError
from omnitrace.inject import marks, oom
from omnitrace.inject.abnormal import send_input, send_recovery
from omnitrace.inject.container_serve import ContainerServe
from omnitrace.inject.gpu_holders import gpu_held_by
from omnitrace.inject.load import MIX, Load, RequestResult, RequestShape, discover_model
from omnitrace.inject.probes import absent_endpoints, probe
from omnitrace.inject.server import (DownSince, Server, become_subreaper, child_env, expand,
                                     free_port)
from omnitrace.inject.signals import SignalFault, inject_signal
from omnitrace.testbed.harness import wait_until

MARKER = "omnitrace"


def pytest_addoption(parser):
    group = parser.getgroup("omnitrace", "fault injection against a serving process tree")
    group.addoption("--omnitrace-serve", metavar="CMD", default=None,
                    help="server command, {port} replaced by a free port (default: the "
                         "testbed); `podman run ...` runs a container (docs/containers.md)")
    group.addoption("--omnitrace-url", metavar="URL", default="http://127.0.0.1:{port}",
                    help="the server's base URL [default: http://127.0.0.1:{port}]")
    group.addoption("--omnitrace-startup-timeout", type=float, default=120.0, metavar="S",
                    help="seconds to wait for /health 200 [default: 120]")
    group.addoption("--omnitrace-max-tokens", type=int, default=None, metavar="N",
                    help="max_tokens of each load request [default: 64]; a fast model needs more "
                         "to have requests in flight at the fault")
    group.addoption("--omnitrace-ignore-eos", action="store_true",
                    help="ask the server to generate past end-of-sequence (vLLM's ignore_eos)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "omnitrace(row): ties a test to a row of the fault-injection matrix")


def _row(request) -> str | None:
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return None
    return marker.kwargs.get("row") or (marker.args[0] if marker.args else None)


class ScenarioWindow:
    """The scenario mark of one test: opened once, closed once (whichever teardown comes first)."""

    def __init__(self, row: str | None):
        self.row, self.span = row, None
        if row:
            self.span = marks.tracer().start_span(marks.SCENARIO_SPAN, attributes=marks.clean(
                marks.scenario_attributes(row)))

    def name_server(self, pid: int, url: str) -> None:
        if self.span is not None:
            self.span.set_attributes({"omnitrace.server.pid": pid, "omnitrace.server.url": url})

    def close(self) -> None:
        if self.span is not None:
            self.span.end()
            self.span = None
            marks.flush()


@pytest.fixture(autouse=True)
def _omnitrace_window(request):
    window = ScenarioWindow(_row(request))
    yield window
    window.close()


class RunningServer:
    """The server under test, as a test sees it."""

    def __init__(self, server: Server, row: str | None, pid: int):
        self._server, self.row = server, row
        self.url, self.pid = server.url, pid   # pid: the server's root (a container's init)
        self.faulted = False   # set by omnitrace_inject: the window then waits for the outcome
        # The model requests must name (vLLM answers 404 to another), asked while healthy.
        self.model = discover_model(self.url)
        self._absent: dict[str, int] | None = None

    def absent_endpoints(self) -> dict[str, int]:
        """Request kinds this server has no endpoint for (asked once, before any fault: a text
        model has no /v1/audio/speech); load leaves them out, as the scenario driver does."""
        if self._absent is None:
            self._absent = absent_endpoints(self.url, MIX, self.model, self.row)
        return self._absent

    def tree_pids(self) -> list[int]:
        self._server.remember_tree()
        return sorted(self._server.seen)

    def alive(self) -> list[int]:
        self._server.remember_tree()
        return [p.pid for p in self._server.alive()]

    def wait_gone(self, timeout_s: float) -> bool:
        """True once every process ever seen in the tree has exited (zombies count as gone)."""
        return _poll(lambda: not self.alive(), timeout_s)

    def health(self) -> int | None:
        """GET /health as a span (so verify has the evidence even without a health prober)."""
        return probe(self.url, "health", timeout_s=5.0)[0].status

    def wait_unavailable(self, timeout_s: float) -> bool:
        """True once /health answers anything but 200 or stops answering (polled every 0.5 s)."""
        return _poll(lambda: self.health() != 200, timeout_s, every_s=0.5)

    def holds_gpu(self) -> bool:
        """Whether a process of the tree holds GPU memory now (the recorder's GPU backend): an
        OOM test is not applicable to a server on the CPU."""
        self._server.remember_tree()
        return gpu_held_by(set(self._server.seen))


SETTLE_MAX_S = 10.0


def _settle(running: RunningServer) -> None:
    """Before a faulted test's window closes: let the outcome finish, as `matrix run` does (every
    dead process of the tree reaped; after a killed root, the whole tree gone), bounded, then
    leave one health probe after it, so verify sees both without waiting on the test's pace."""
    server = running._server

    def finished() -> bool:
        root_alive = server.proc.poll() is None
        return not server.zombies() and (root_alive or not server.alive())
    _poll(finished, SETTLE_MAX_S)
    _watch_unavailable_hold(running)
    running.health()


def _watch_unavailable_hold(running: RunningServer) -> None:
    """A row whose service-unavailable rule claims "turns unavailable and stays so" needs /health
    watched for the row's unavailable_hold_s after it went down (as `matrix run` does), else the
    rule cannot be decided; probes every 0.5 s (recorded spans), bounded by the hold + 10 s."""
    row = _matrix().row(running.row) if running.row else None
    if row is None or "service-unavailable" not in row.rules:
        return
    hold = row.thresholds.get("unavailable_hold_s", 0.0)
    down = DownSince()

    def held() -> bool:
        down.note(running.health())
        return down.held_for(hold)
    _poll(held, hold + SETTLE_MAX_S, every_s=0.5)


def _matrix():
    """The matrix the recording names (OMNITRACE_MATRIX, set by `omnitrace record --matrix`),
    else the built-in one; read once per file."""
    return _load_matrix(os.environ.get("OMNITRACE_MATRIX"))


@functools.lru_cache(maxsize=None)
def _load_matrix(path: str | None):
    from omnitrace.verify.matrix import load_matrix
    return load_matrix(path)


def _poll(condition, timeout_s: float, every_s: float = 0.1) -> bool:
    return wait_until(condition, timeout_s, every_s) is not None


@pytest.fixture
def omnitrace_server(request, _omnitrace_window):
    """Start --omnitrace-serve (default: the testbed) on a free port and wait for /health 200.
    A container command (`podman run ...`) is run as `matrix run` runs it (container_serve.py):
    the server is the container's init, reached on the host port the container publishes, and
    the container is removed at teardown."""
    from omnitrace.inject.runner import testbed_command
    options = request.config.option
    port = free_port()
    url = options.omnitrace_url.replace("{port}", str(port)).rstrip("/")
    argv = expand(options.omnitrace_serve or testbed_command(), port)
    container = ContainerServe.of(argv, None, option="--omnitrace-serve")
    server = Server(container.argv if container else argv, url)
    row = _omnitrace_window.row
    become_subreaper()  # orphans of the server are reaped here, where the recorder sees it
    server.start(child_env(OMNITRACE_SCENARIO=row, OMNITRACE_SERVER_URL=url))
    running = None
    try:
        root = _server_root(server, container, options.omnitrace_startup_timeout)
        _omnitrace_window.name_server(root, server.url)
        running = RunningServer(server, row, root)
        running.health()   # a recorded 2xx before any fault: the "before" of the HTTP rules
        yield running
    finally:
        if running is not None and running.faulted and row:
            _settle(running)
        _omnitrace_window.close()  # the window ends before clean-up starts
        _stop(request, server, container)


def _server_root(server: Server, container: ContainerServe | None, timeout_s: float) -> int:
    """The server's root (a container's init, else the command), announced to the recorder once
    its URL is known, and healthy. A server that cannot start fails the test in one line."""
    try:
        root = container.attach(server, timeout_s).init_pid if container else server.proc.pid
        marks.announce_server(root, server.url)
        server.wait_healthy(timeout_s)
        return root
    except OmnitraceError as exc:
        problem = str(exc)
    # outside the except block: pytest would print the OmnitraceError as its cause
    pytest.fail(f"omnitrace: {problem}", pytrace=False)


def _stop(request, server: Server, container: ContainerServe | None) -> None:
    """Stop the server's tree, then remove its container (the client may have been killed
    before it could), and say what had to be killed or removed."""
    killed = server.stop()
    said = ["leftover processes killed: " + ", ".join(killed)] if killed else []
    if container is not None and container.remove():
        said.append(f"removed {container.runtime} container {container.label()}")
    if said:
        request.node.add_report_section("teardown", "omnitrace", "; ".join(said))


class Injector:
    def __init__(self, server: RunningServer):
        self.server, self.hogs = server, []
        # under `omnitrace record --matrix FILE`: "worker" by that matrix's patterns, as verify.
        # Read before any load runs: loading it imports verify's modules, which took seconds with
        # a load thread streaming, delaying the fault until the streams had ended.
        self.patterns = _matrix().patterns

    def signal(self, target: str, sig: str) -> SignalFault:
        """Signal `target` (worker, serve, all, a pid or a pattern) in the server's tree."""
        self.server.faulted = True
        return inject_signal(self.server.pid, target, sig, scenario=self.server.row,
                             server_url=self.server.url, patterns=self.patterns)

    def input(self, variant: str, timeout_s: float = 30.0) -> RequestResult:
        """Send the abnormal request `variant` (omnitrace/inject/input_variants.py) inside an
        input mark; returns its answer, a recorded span like any request."""
        self.server.faulted = True
        return send_input(self.server.url, variant, self.server.model, scenario=self.server.row,
                          server_pid=self.server.pid, timeout_s=timeout_s)

    def recovery(self, keyword: str | None = None, timeout_s: float = 30.0):
        """The next valid chat request: (its answer, whether it held `keyword`; None unasked)."""
        return send_recovery(self.server.url, self.server.model, keyword, timeout_s)

    def oom(self, ratio: float = oom.DEFAULT_RATIO, hold_s: float = 300.0, strict: bool = False):
        """Start the GPU memory hog (every device) and wait for READY; stopped at teardown."""
        self.server.faulted = True
        hog = oom.start_hog(ratio, hold_s=hold_s, strict=strict, scenario=self.server.row,
                            server_url=self.server.url, server_pid=self.server.pid)
        self.hogs.append(hog)
        return hog


@pytest.fixture
def omnitrace_inject(omnitrace_server):
    injector = Injector(omnitrace_server)
    yield injector
    for hog in injector.hogs:
        oom.stop_hog(hog)


class BackgroundLoad:
    def __init__(self, load: Load):
        self.load, self.thread = load, load.run_in_thread()

    @property
    def results(self) -> list[RequestResult]:
        return list(self.load.results)

    def wait_in_flight(self, timeout_s: float = 30.0) -> bool:
        """True once a streaming request has its first byte, or any request is open and answered
        nothing yet while others already finished (a non-streaming mix)."""
        return self.load.wait_until(lambda l: l.streaming >= 1 or (l.in_flight >= 1 and
                                                                   l.finished_any()), timeout_s)

    def wait_done(self, timeout_s: float) -> bool:
        self.thread.join(timeout_s)
        return not self.thread.is_alive()


@pytest.fixture
def omnitrace_load(request, omnitrace_server):
    """Factory: omnitrace_load(kind="mix", rate=4, requests=12, concurrency=8) runs in the
    background; every request is a span; open requests are cancelled at teardown. Requests are
    as long as --omnitrace-max-tokens/--omnitrace-ignore-eos say."""
    started: list[BackgroundLoad] = []
    options = request.config.option
    shape = RequestShape(max_tokens=options.omnitrace_max_tokens or RequestShape.max_tokens,
                         ignore_eos=options.omnitrace_ignore_eos)

    def start(kind: str = "mix", rate: float = 4.0, requests: int = 12, concurrency: int = 8,
              timeout_s: float = 20.0) -> BackgroundLoad:
        load = Load(omnitrace_server.url, kind, rate, requests, concurrency, timeout_s,
                    model=omnitrace_server.model, scenario=omnitrace_server.row, shape=shape,
                    absent=frozenset(omnitrace_server.absent_endpoints()))
        started.append(BackgroundLoad(load))
        return started[-1]
    yield start
    for background in started:
        background.load.cancel()
        background.wait_done(10)
