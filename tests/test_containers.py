"""Servers in containers, with a real runtime: rootful podman (scripts/setup.sh installs it and
builds the local image, localhost/omnitrace-host:1; no registry is asked).

The testbed runs in a container as `omnitrace matrix run --serve 'podman run ...'` runs it; a
container started outside any omnitrace command is attached by name; Ctrl+C of the runner leaves
no container and no process; a server that is its container's pid 1 without a SIGTERM handler
shows what the kernel does with a SIGTERM from the host (drops it), in target-exits' evidence.
A host port podman picks (`-p {port}`) is found and used; the pytest plugin runs a container
serve as the runner does, and removes it also after Ctrl+C.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from omnitrace.container import inspect, ns_pids
from omnitrace.gpu import sim
from omnitrace.inject.server import free_port
from tests.harness import matrix_run, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root (CI is root)")

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/omnitrace-host:1"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SEED_ROWS = ("no-load/sigkill/serve", "no-load/sigterm/serve", "under-load/sigkill/worker")
# SIGTERM to every process of a container whose init is the server: the resource tracker ignores
# it and waits for its pipe to close, but the init's exit makes the kernel SIGKILL the namespace
TEARDOWN_ROW = "no-load/sigterm/all"
TESTBED = [sys.executable, "-m", "omnitrace.cli", "testbed", "serve", "--host", "0.0.0.0"]


@pytest.fixture(scope="module")
def sim_gpu(tmp_path_factory):
    """A simulated GPU of this module's own (not the machine's default, which other runs share),
    named by OMNITRACE_SIM_GPU to everything the tests start: --run-args mounts it into the
    containers, and the host's recorder reads it."""
    path = sim.ensure_device(tmp_path_factory.mktemp("sim-gpu"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sim.ENV_VAR, str(path))
        mp.setitem(ENV, sim.ENV_VAR, str(path))
        yield sim.SimGpu(path)


@pytest.fixture(scope="module")
def run_args(sim_gpu) -> list[str]:
    """The image (built if missing) and the flags that mount this machine's Python and repo, and
    the simulated GPU's ledger."""
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: `make setup` (scripts/setup.sh) installs it")
    script = str(REPO / "scripts" / "container-image.sh")
    subprocess.run([script], check=True, timeout=120)
    args = subprocess.run([script, "--run-args", sys.executable], check=True, text=True,
                          capture_output=True).stdout
    return shlex.split(args)


def serve_command(run_args: list[str], name: str, program: list[str], extra=(),
                  publish=("-p", "{port}:{port}")) -> str:
    """A --serve command as a user writes it: the container publishes {port} on the host (or
    what `publish` says: `-p {port}` lets the runtime pick the host port)."""
    return shlex.join(["podman", "run", "--rm", "--name", name, *publish, *extra, *run_args,
                       IMAGE, *program])


def omnitrace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrace.cli", *args], env=ENV, text=True,
                          capture_output=True, timeout=timeout)


def slug(row: str) -> str:
    return row.replace("/", "_")


def verdicts(report: dict, row: str) -> dict[str, str]:
    scenario = next(s for s in report["scenarios"] if s["id"] == row)
    return {r["id"]: r["verdict"] for r in scenario["rules"]}


def nothing_left_of(cid: str, port: int) -> list[str]:
    """Processes that still belong to the container or its command (conmon names the id)."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        text = " ".join(proc.info["cmdline"] or [])
        if cid in text or f"--port {port}" in text or f"{port}:{port}" in text:
            left.append(f"{proc.pid} {text[:100]}")
    return left


def container_exists(ref: str) -> bool:
    return subprocess.run(["podman", "container", "exists", ref]).returncode == 0


# --- the testbed's seed rows in a container --------------------------------------------------

@pytest.fixture(scope="module")
def seed_run(run_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("containers") / "run"
    serve = serve_command(run_args, "omnitrace-seed-{port}", [*TESTBED, "--port", "{port}"])
    cli, report = matrix_run(out, "--serve", serve, "--scenarios",
                             ",".join(SEED_ROWS + (TEARDOWN_ROW,)), env=ENV, timeout=400)
    assert report is not None, cli.stderr[-3000:]
    return out, cli, report


def test_seed_rows_pass_with_the_testbed_in_a_container(seed_run):
    out, cli, report = seed_run
    failed = {(s["id"], r["id"]) for s in report["scenarios"] for r in s["rules"]
              if r["verdict"] == "fail"}
    # the teardown row's failure is test_a_helper_that_ignores_sigterm_dies_with_the_namespace's
    assert failed == {(TEARDOWN_ROW, "graceful-shutdown")}, cli.stdout[-3000:]
    assert cli.returncode == 1, cli.stdout[-3000:] + cli.stderr[-2000:]
    for row in SEED_ROWS:
        rules = verdicts(report, row)
        assert "fail" not in rules.values(), (row, rules)
        assert rules["target-exits"] == rules["service-unavailable"] == "pass", (row, rules)
    assert verdicts(report, "no-load/sigkill/serve")["no-residue"] == "pass"
    assert verdicts(report, "no-load/sigterm/serve")["graceful-shutdown"] == "pass"
    assert verdicts(report, "under-load/sigkill/worker")["inflight-fail-fast"] == "pass"


def test_the_namespace_s_teardown_reaps_decide_no_zombies(seed_run):
    """The container's init dies: the kernel reaps the rest of the namespace with no wait call,
    and the recorder writes those reaps, so no-zombies decides on the serve rows."""
    _, cli, report = seed_run
    for row in (*SEED_ROWS[:2], TEARDOWN_ROW):
        scenario = next(s for s in report["scenarios"] if s["id"] == row)
        rule = next(r for r in scenario["rules"] if r["id"] == "no-zombies")
        assert rule["verdict"] == "pass", (row, rule)
        text = " ".join(e["text"] for e in rule["evidence"])
        assert "by the kernel (no wait call)" in text, (row, text)   # the last one was a helper


def test_a_helper_that_ignores_sigterm_dies_with_the_namespace(seed_run):
    """Outside a container the resource tracker ignores "kill all"'s SIGTERM and exits by itself
    once the server is gone; inside, the init's exit makes the kernel SIGKILL it first. The
    evidence names the tracker, the SIGKILL and the init it came from."""
    _, _, report = seed_run
    rule = next(r for s in report["scenarios"] if s["id"] == TEARDOWN_ROW
                for r in s["rules"] if r["id"] == "graceful-shutdown")
    text = " ".join(e["text"] for e in rule["evidence"])
    assert rule["verdict"] == "fail" and "resource_tracker" in text, text
    assert "ended with signal SIGKILL from" in text and "pid namespace's init" in text, text


def test_each_row_names_its_container_and_leaves_none(seed_run):
    """The driver's server is the container's init (a host pid, pid 1 inside); the id the runner
    kept in <row>.cid is the container's; neither the container nor a process of it is left."""
    out, _, report = seed_run
    for row in SEED_ROWS + (TEARDOWN_ROW,):
        outcome = json.loads((out / f"{slug(row)}.outcome.json").read_text())
        container = outcome["container"]
        assert container["runtime"] == "podman" and container["name"].startswith("omnitrace-seed-")
        assert container["id"] == (out / f"{slug(row)}.cid").read_text().strip()
        assert outcome["server_pid"] == container["init_pid"] > 1
        scenario = next(s for s in report["scenarios"] if s["id"] == row)
        assert scenario["server_pid"] == container["init_pid"]
        assert not container_exists(container["id"])
        port = int(container["name"].rsplit("-", 1)[1])
        assert nothing_left_of(container["id"], port) == []
    serve_rows = [json.loads((out / f"{slug(r)}.outcome.json").read_text()) for r in SEED_ROWS[:2]]
    assert all(o["fault_pids"] == [o["server_pid"]] for o in serve_rows)


def test_the_worker_row_kills_a_stage_inside_the_container(seed_run):
    out, _, _ = seed_run
    from omnitrace.model.build import build_model
    from omnitrace.timeline import read_timeline
    row = "under-load/sigkill/worker"
    outcome = json.loads((out / f"{slug(row)}.outcome.json").read_text())
    model = build_model(read_timeline(out / f"{slug(row)}.jsonl"))
    init = model.process(outcome["container"]["init_pid"])
    [victim] = outcome["fault_pids"]
    assert victim in {p.pid for p in model.descendants(init)}
    assert model.process(victim).name.startswith("VLLM::StageEngineCoreProc")


def evidence_names_both(text: str, host_pid: int, ns_pid: int) -> bool:
    """Whether evidence shows a process's host pid and its pid inside the container
    (Process.pid_label: 'pid 48211 (ns 7)'); the one place that reads that wording."""
    return str(host_pid) in text and re.search(rf"\b(ns|namespace|container)\D{{0,12}}\b{ns_pid}\b",
                                               text) is not None


def test_evidence_names_the_host_and_the_namespace_pid(seed_run):
    out, _, report = seed_run
    outcome = json.loads((out / "no-load_sigkill_serve.outcome.json").read_text())
    scenario = next(s for s in report["scenarios"] if s["id"] == "no-load/sigkill/serve")
    rule = next(r for r in scenario["rules"] if r["id"] == "target-exits")
    text = " ".join(e["text"] for e in rule["evidence"])
    assert evidence_names_both(text, outcome["server_pid"], 1), text


def test_gpu_released_decides_by_the_stages_host_pids(seed_run):
    """The stages allocate in the ledger --run-args mounts, and the host's recorder reports them
    by host pid, as NVML does: gpu-released passes (it was inconclusive, 'held no GPU memory
    before the fault') and names each stage by its host pid, with its namespace pid beside it."""
    out, _, report = seed_run
    from omnitrace.model.build import build_model
    from omnitrace.timeline import read_timeline
    for row in ("no-load/sigkill/serve", "no-load/sigterm/serve"):
        scenario = next(s for s in report["scenarios"] if s["id"] == row)
        rule = next(r for r in scenario["rules"] if r["id"] == "gpu-released")
        text = " ".join(e["text"] for e in rule["evidence"])
        assert rule["verdict"] == "pass", (row, rule["summary"], text)
        released = re.findall(r"pid (\d+) \(ns (\d+)\) (\S+) released its GPU memory", text)
        model = build_model(read_timeline(out / f"{slug(row)}.jsonl"))
        tree = {p.pid for p in model.descendants(model.process(scenario["server_pid"]))}
        assert len(released) == 3, text   # the testbed's three stages
        for host, ns, name in released:
            assert int(host) in tree and int(host) != int(ns), (host, ns, text)
            assert name.startswith("VLLM::StageEngineCoreProc"), text


def test_a_container_that_publishes_no_port_stops_its_row_with_one_line(run_args, tmp_path):
    serve = serve_command(run_args, "omnitrace-port-{port}", [*TESTBED, "--port", "{port}"],
                          publish=())
    cli, report = matrix_run(tmp_path / "run", "--serve", serve, "--scenarios",
                             "no-load/sigkill/serve", env=ENV, timeout=300)
    assert cli.returncode == 1
    [warning] = [w for w in report["warnings"] if "publishes" in w]
    assert "--serve: the container publishes no port, so http://127.0.0.1:" in warning, warning
    assert "Traceback" not in (tmp_path / "run" / "no-load_sigkill_serve.log").read_text()
    outcome = json.loads((tmp_path / "run" / "no-load_sigkill_serve.outcome.json").read_text())
    cid = (tmp_path / "run" / "no-load_sigkill_serve.cid").read_text().strip()
    assert outcome["container"]["id"] == cid and not container_exists(cid)


def test_a_host_port_the_runtime_picks_is_found_and_used(run_args, tmp_path):
    """`-p {port}`: {port} is the server's port inside the container and podman picks the host
    port. The driver asks podman for it, and the load, the probes, the marks and the recorder's
    health prober all go there: the worker row passes as with a port the command publishes."""
    row = "under-load/sigkill/worker"
    out = tmp_path / "run"
    serve = serve_command(run_args, "omnitrace-picked-{port}", [*TESTBED, "--port", "{port}"],
                          publish=("-p", "{port}"))
    cli, report = matrix_run(out, "--serve", serve, "--scenarios", row, env=ENV, timeout=300)
    assert report is not None, cli.stderr[-3000:]
    rules = verdicts(report, row)
    assert cli.returncode == 0 and "fail" not in rules.values(), (rules, cli.stdout[-2000:])
    assert rules["service-unavailable"] == rules["inflight-fail-fast"] == "pass", rules
    container = json.loads((out / f"{slug(row)}.outcome.json").read_text())["container"]
    [(inside, host)] = container["ports"].items()
    assert container["url"] == f"http://127.0.0.1:{host}" and int(inside) != host
    assert not container_exists(container["id"])
    assert nothing_left_of(container["id"], int(inside)) == []
    spans = [e for e in map(json.loads, (out / f"{slug(row)}.jsonl").open()) if e["kind"] == "span"]
    marked = {e["attributes"].get("omnitrace.server.url") for e in spans
              if e["attributes"].get("omnitrace.mark") in ("scenario", "fault")}
    assert marked == {container["url"]}, marked
    healthy = [e for e in spans if e["source"] == "probe" and e["attributes"].get(
        "http.response.status_code") == 200]
    assert healthy and {e["attributes"]["url.full"] for e in healthy} == \
        {container["url"] + "/health"}


# --- a container started outside any omnitrace command ----------------------------------------

@pytest.fixture
def outside_container(run_args):
    """The testbed in a container started by hand (`podman run -d`), healthy."""
    port = free_port()
    name = f"omnitrace-outside-{port}"
    subprocess.run(["podman", "run", "-d", "--name", name, "-p", f"{port}:{port}", *run_args,
                    IMAGE, *TESTBED, "--port", str(port)], check=True, capture_output=True,
                   timeout=120)
    try:
        wait_for(lambda: _healthy(port), timeout=120, what=f"{name} healthy", step=0.2)
        yield name, port
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=120)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_inject_by_container_name_signals_host_pids_inside_it(outside_container, tmp_path):
    """Recorded by attaching to the container's init (its host pid, from the runtime): the
    worker inject --container picks is a stage of the container, and it exits."""
    name, port = outside_container
    init = inspect(name).init_pid
    timeline = tmp_path / "attached.jsonl"
    rec = omnitrace("record", "-o", str(timeline), "--attach", str(init), "--health-url",
                    f"http://127.0.0.1:{port}/health", "--", sys.executable, "-m", "omnitrace.cli",
                    "inject", "signal", "--container", name, "--target", "worker", "--signal",
                    "KILL", "--scenario", "no-load/sigkill/worker")
    assert rec.returncode == 0, rec.stderr[-2000:]
    [victim] = re.findall(r"sent SIGKILL to (\d+)", rec.stdout + rec.stderr)
    victim = int(victim)
    assert victim != init and ns_pids(init)[-1] == 1
    report = json.loads(omnitrace("verify", str(timeline), "--json", "-").stdout)
    [scenario] = report["scenarios"]
    assert scenario["server_pid"] == init and scenario["target_pids"] == [victim]
    assert verdicts(report, "no-load/sigkill/worker")["target-exits"] == "pass"


def test_a_container_stages_gpu_memory_is_seen_from_the_host_by_host_pid(outside_container,
                                                                         sim_gpu):
    """What the recorder's GPU source reads: each stage of the container holds its 2 GiB under
    the pid the host knows it by (the ledger only has the namespace pid)."""
    name, _ = outside_container
    init = psutil.Process(inspect(name).init_pid)
    stages = {p.pid for p in init.children(recursive=True)
              if p.name().startswith("VLLM::StageEngineCoreProc")}

    def holders() -> dict[int, int]:
        return {pid: n for d in range(sim_gpu.device_count())
                for pid, n in sim_gpu.processes(d).items()}
    assert len(stages) == 3
    wait_for(lambda: holders().keys() == stages, timeout=60, what="the stages' GPU memory")
    assert set(holders().values()) == {2 << 30}   # --gpu-mem-per-stage's default
    for pid in stages:
        host, inner = ns_pids(pid)
        assert host == pid and inner != pid


def test_inject_by_container_refuses_what_is_outside_it(outside_container):
    name, _ = outside_container
    conmon = psutil.Process(inspect(name).init_pid).parent()   # the container's keeper, outside
    cases = [(["--container", name, "--target", str(conmon.pid)], "not in the process tree"),
             (["--container", "omnitrace-no-such-container"], "--container omnitrace-no-such"),
             (["--container", name, "--server", str(os.getpid())], "exactly one of --server")]
    for args, message in cases:
        done = omnitrace("inject", "signal", *args, "--signal", "TERM")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert conmon.is_running()


# --- Ctrl+C of the runner ------------------------------------------------------------------------

def test_ctrl_c_of_the_runner_leaves_no_container_and_no_process(run_args, tmp_path):
    out = tmp_path / "run"
    serve = serve_command(run_args, "omnitrace-ctrlc-{port}", [*TESTBED, "--port", "{port}"])
    runner = subprocess.Popen([sys.executable, "-m", "omnitrace.cli", "matrix", "run", "--out",
                               str(out), "--serve", serve, "--scenarios", "no-load/sigterm/serve"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_default_sigint)
    cidfile = out / "no-load_sigterm_serve.cid"
    try:
        cid = wait_for(lambda: cidfile.exists() and cidfile.read_text().strip(), timeout=120,
                       what="the container's id", step=0.05)
        wait_for(lambda: container_exists(cid), timeout=60, what="the container", step=0.05)
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode != 0
    assert not container_exists(cid)
    assert nothing_left_of(cid, _port_of(out)) == []


def _default_sigint() -> None:
    """As a terminal starts it: a suite run in the background (`make test &`) inherits SIGINT
    ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _port_of(out: Path) -> int:
    """The row's port, from the command the recording ran (its header)."""
    header = json.loads((out / "no-load_sigterm_serve.jsonl").open().readline())
    return int(header["command"][header["command"].index("--port") + 1])


# --- the server is the container's pid 1 ---------------------------------------------------------

PID1_MATRIX = """\
extends: vllm-omni
matrix: pid1
rows:
  - id: no-load/sigterm/serve
    observe_s: 8
    thresholds: {exit_s: 4, residue_s: 4, gpu_release_s: 4}
"""


def test_sigterm_to_a_pid_1_server_without_a_handler_is_dropped_by_the_kernel(run_args, tmp_path):
    """Python's http.server installs no SIGTERM handler; as its container's init, the kernel
    drops a SIGTERM from the host (pid_namespaces(7)), so it never exits: target-exits fails
    and says why, and the runner still removes the container and everything of it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "health").write_text("ok\n")   # GET /health answers 200
    matrix = tmp_path / "pid1.yaml"
    matrix.write_text(PID1_MATRIX)
    program = [sys.executable, "-m", "http.server", "{port}", "--bind", "0.0.0.0", "--directory",
               "/site"]
    serve = serve_command(run_args, "omnitrace-pid1-{port}", program,
                          extra=["-v", f"{site}:/site:ro"])
    out = tmp_path / "run"
    cli, report = matrix_run(out, "--serve", serve, "--matrix", str(matrix), "--scenarios",
                             "no-load/sigterm/serve", env=ENV, timeout=300)
    assert report is not None, cli.stderr[-3000:]
    assert cli.returncode == 1
    [scenario] = report["scenarios"]
    rule = next(r for r in scenario["rules"] if r["id"] == "target-exits")
    assert rule["verdict"] == "fail"
    text = " ".join(e["text"] for e in rule["evidence"])
    assert "the kernel ignored SIGTERM" in text, text
    outcome = json.loads((out / "no-load_sigterm_serve.outcome.json").read_text())
    assert "pid 1 of its pid namespace" in outcome["dropped"][str(outcome["server_pid"])]
    assert not container_exists(outcome["container"]["id"])
    port = int(outcome["container"]["name"].rsplit("-", 1)[1])
    assert nothing_left_of(outcome["container"]["id"], port) == []


# --- a container a daemon starts for the recorded command -------------------------------------

@pytest.fixture
def runtime_daemon(run_args, tmp_path):
    """A stand-in for dockerd or a podman service: a process outside the recorded command that
    runs a container when asked on a FIFO and answers the container's exit status on another.
    The container: a shell (pid 1 there) that runs a child exiting 3, then exits 7."""
    ask, answer, cidfile = tmp_path / "ask", tmp_path / "answer", tmp_path / "cid"
    os.mkfifo(ask)
    os.mkfifo(answer)
    name = f"omnitrace-daemon-{free_port()}"
    run = shlex.join(["podman", "run", "--rm", "--name", name, "--cidfile", str(cidfile),
                      *run_args, IMAGE,
                      "sh", "-c", "sh -c 'exit 3'; exit 7"])
    daemon = subprocess.Popen(["sh", "-c", f"read _ < {ask}; {run} >/dev/null 2>&1; "
                               f"echo $? > {answer}"], start_new_session=True)
    try:
        yield ask, answer, cidfile
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=60)
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=120)


def _record_asking_the_daemon(tmp_path, ask, answer, *flags):
    from omnitrace.timeline import read_timeline
    out = tmp_path / f"daemon{len(flags)}.jsonl"
    rec = omnitrace("record", "-o", str(out), "--gpu", "off", "--no-health", "--no-otlp", *flags,
                    "--", "sh", "-c", f"echo run > {ask}; cat {answer}", timeout=300)
    assert rec.returncode == 0 and rec.stdout.strip() == "7", rec.stdout + rec.stderr[-2000:]
    return read_timeline(out)


def _container_inits(timeline) -> list[int]:
    """Processes the kernel saw exec the container's shell and exit 7: the container's init. From
    kernel records only: the init lives a few ms, which a procfs snapshot (its cgroup, its
    namespace pid) can miss on a busy machine."""
    from omnitrace.events import Exec, ExitGroup
    shells = {e.pid for e in timeline.events if isinstance(e, Exec) and e.filename == "/usr/bin/sh"}
    return [e.pid for e in timeline.events
            if isinstance(e, ExitGroup) and e.code == 7 and e.pid in shells]


def test_a_container_a_daemon_starts_is_followed_with_follow_containers(runtime_daemon,
                                                                        tmp_path):
    """The container descends from the daemon, not from the recorded command: only
    --follow-containers (its cgroup made while recording) brings it into the recording, from its
    init's first exec, with both pids and the child the init forked."""
    ask, answer, _ = runtime_daemon
    timeline = _record_asking_the_daemon(tmp_path, ask, answer, "--follow-containers")
    from omnitrace.events import Fork, Reap
    [init] = _container_inits(timeline)
    [child] = [e for e in timeline.events if isinstance(e, Fork) and not e.thread
               and e.ppid == init]
    assert child.ns_pid is not None and child.ns_pid > 1   # the pid its clone returned inside
    reaps = [e for e in timeline.events if isinstance(e, Reap) and e.pid == child.pid]
    assert [(r.reaper, r.exit_code) for r in reaps] == [(init, 3)]
    assert timeline.footer["counters"]["kernel"]["containers_followed"] >= 1
    assert timeline.header["sources"]["kernel"]["follow_containers"] is True


def test_without_follow_containers_a_daemon_s_container_is_not_recorded(runtime_daemon, tmp_path):
    ask, answer, _ = runtime_daemon
    timeline = _record_asking_the_daemon(tmp_path, ask, answer)
    assert _container_inits(timeline) == []


# --- the pytest plugin with a container serve ---------------------------------------------

PLUGIN_TEST = """\
import json, psutil, pytest
from omnitrace.container import ns_pids

@pytest.mark.omnitrace(row="no-load/sigkill/serve")
def test_kill_serve(omnitrace_server, omnitrace_inject):
    cmdline = psutil.Process(omnitrace_server.pid).cmdline()
    json.dump({"pid": omnitrace_server.pid, "url": omnitrace_server.url,
               "ns_pids": ns_pids(omnitrace_server.pid),
               "inside_port": int(cmdline[cmdline.index("--port") + 1]),
               "tree": omnitrace_server.tree_pids()}, open("server.json", "w"))
    assert omnitrace_server.health() == 200
    assert omnitrace_inject.signal("serve", "KILL").pids == [omnitrace_server.pid]
    assert omnitrace_server.wait_gone(30), omnitrace_server.alive()
"""


def plugin_serve(run_args: list[str]) -> str:
    return serve_command(run_args, "omnitrace-plugin-{port}", [*TESTBED, "--port", "{port}"],
                         publish=("-p", "{port}"))


def plugin_containers() -> list[tuple[str, int]]:
    """(id, port) of each container a plugin run started (its name ends in its {port})."""
    listed = subprocess.run(["podman", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}",
                             "--filter", "name=omnitrace-plugin-"], capture_output=True, text=True,
                            timeout=60).stdout.split("\n")
    return [(cid, int(name.rsplit("-", 1)[1]))
            for cid, name in map(str.split, filter(None, listed))]


def test_the_plugin_runs_a_container_serve_as_matrix_run_does(run_args, tmp_path):
    """`pytest --omnitrace-serve 'podman run ... -p {port} ...'` under `omnitrace record`: the
    fixture's server is the container's init (pid 1 inside), reached on the host port podman
    picked; the recording verifies with that init as the server, and no container is left."""
    (tmp_path / "test_in_container.py").write_text(PLUGIN_TEST)
    timeline = tmp_path / "run.jsonl"
    recorded = subprocess.run(
        [sys.executable, "-m", "omnitrace.cli", "record", "-o", str(timeline), "--",
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_in_container.py",
         "--omnitrace-serve", plugin_serve(run_args)], cwd=tmp_path, env=ENV, text=True,
        capture_output=True, timeout=300)
    assert recorded.returncode == 0, recorded.stdout[-3000:] + recorded.stderr[-2000:]
    server = json.loads((tmp_path / "server.json").read_text())
    assert server["ns_pids"][-1] == 1 and len(server["ns_pids"]) > 1
    assert server["url"].rsplit(":", 1)[1] != str(server["inside_port"])
    report = json.loads(omnitrace("verify", str(timeline), "--json", "-").stdout)
    [scenario] = report["scenarios"]
    assert scenario["server_pid"] == server["pid"]
    rules = verdicts(report, "no-load/sigkill/serve")
    assert rules["target-exits"] == rules["service-unavailable"] == "pass", rules
    assert "fail" not in rules.values(), rules
    probes = [e for e in map(json.loads, timeline.open()) if e["kind"] == "span" and
              e["source"] == "probe" and e["attributes"].get("http.response.status_code") == 200]
    assert {e["attributes"]["url.full"] for e in probes} == {server["url"] + "/health"}
    assert plugin_containers() == []
    assert [p for p in server["tree"] if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []


def test_ctrl_c_of_a_plugin_run_removes_its_container(run_args, tmp_path):
    """Ctrl+C while the container starts: the fixture's clean-up stops the client and removes
    the container it named in its cidfile."""
    (tmp_path / "test_in_container.py").write_text(PLUGIN_TEST)
    suite = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "test_in_container.py", "--omnitrace-serve", plugin_serve(run_args)],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
    try:
        [(cid, port)] = wait_for(plugin_containers, timeout=120, what="the container",
                                 step=0.05)
        suite.send_signal(signal.SIGINT)
        output = suite.communicate(timeout=120)[0]
    finally:
        if suite.poll() is None:
            suite.kill()
    assert suite.returncode != 0 and "KeyboardInterrupt" in output, output[-2000:]
    assert not container_exists(cid) and plugin_containers() == []
    assert nothing_left_of(cid, port) == []


def test_the_plugin_refuses_a_container_that_publishes_no_port_in_one_line(run_args, tmp_path):
    (tmp_path / "test_in_container.py").write_text(PLUGIN_TEST)
    serve = serve_command(run_args, "omnitrace-plugin-{port}", [*TESTBED, "--port", "{port}"],
                          publish=())
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_in_container.py", "--omnitrace-serve", serve], cwd=tmp_path,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "\nomnitrace: --omnitrace-serve: the container publishes no port, so " \
           "http://127.0.0.1:" in run.stdout, run.stdout[-3000:]
    assert "Traceback" not in run.stdout and "container_serve.py" not in run.stdout
    assert plugin_containers() == []
