"""The Grafana dashboards against a real Prometheus: it scrapes live recording metrics and a
Pushgateway holding a verify push, and every panel's PromQL must return data."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from omnitrace.export.prometheus import export_verdicts
from omnitrace.inject.runner import scenario_command
from omnitrace.verify.matrix import load_matrix
from omnitrace.inject.server import free_port
from tests.recording import kill_session
from tests.test_export_metrics import sample_report, wait_http

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
SCRAPE_S = 1


def dashboard(name: str) -> dict:
    return json.loads((DASHBOARDS / name).read_text())


def panel_queries(board: dict):
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def concrete(expr: str) -> str:
    """What Grafana sends with "All" selected for every variable."""
    expr = expr.replace("$__rate_interval", "30s")
    return re.sub(r"\$\{?(run_id|row|instance)\}?", ".*", expr)


@pytest.mark.parametrize("name", ["run-overview.json", "live-recording.json"])
def test_dashboards_choose_their_datasource_through_a_variable(name):
    board = dashboard(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_provisioning_files_point_grafana_at_the_dashboards():
    providers = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/omnitrace.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    sources = yaml.safe_load((DASHBOARDS / "provisioning/datasources/prometheus.yaml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"


@pytest.fixture
def prometheus_stack(tmp_path):
    """A Pushgateway and a Prometheus scraping it and a recorder's --metrics-port every second.
    Yields (the port the recorder must serve metrics on, gateway URL, Prometheus API URL)."""
    prom = shutil.which("prometheus")
    gateway_bin = shutil.which("prometheus-pushgateway")
    if not prom or not gateway_bin:
        pytest.skip("Debian's prometheus and prometheus-pushgateway are needed (make setup)")
    procs = []
    try:
        gw_port, prom_port, metrics_port = distinct_ports(3)
        procs.append(subprocess.Popen([gateway_bin, f"--web.listen-address=127.0.0.1:{gw_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        config = {"global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": "1s"},
                  "scrape_configs": [
                      {"job_name": "omnitrace-record", "static_configs": [
                          {"targets": [f"127.0.0.1:{metrics_port}"]}]},
                      # honor_labels keeps each push's job and run_id
                      {"job_name": "pushgateway", "honor_labels": True, "static_configs": [
                          {"targets": [f"127.0.0.1:{gw_port}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.append(subprocess.Popen(
            [prom, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gateway, api = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
        wait_http(gateway + "/-/ready")
        wait_http(api + "/-/ready")
        yield metrics_port, gateway, api
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def distinct_ports(n: int, taken: tuple[int, ...] = ()) -> list[int]:
    """n free ports, none equal to another or to `taken` (each draw alone can repeat one)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    return ports


def query(api: str, expr: str, at: float | None = None) -> list:
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    reply = httpx.get(api + "/api/v1/query", params=params, timeout=10).json()
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]["result"]


def wait_for(api: str, expr: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not query(api, expr):
        assert time.monotonic() < deadline, f"Prometheus never had: {expr}"
        time.sleep(0.5)


def record_a_row(tmp_path, metrics_port: int, row_id: str) -> subprocess.Popen:
    """`omnitrace record --metrics-port` of one matrix row against the testbed, as `matrix run`
    records it: load, a killed worker, health turning 503, the simulated GPU, scenario marks."""
    row = load_matrix(None).row(row_id)
    (port,) = distinct_ports(1, taken=(metrics_port,))
    argv = scenario_command(row, f"{sys.executable} -m omnitrace.cli testbed serve --port {{port}}",
                            port, f"http://127.0.0.1:{port}", tmp_path / "outcome.json",
                            ["--metrics-port", str(metrics_port)], tmp_path / "row.jsonl")
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(tmp_path / "gpu")}
    with open(tmp_path / "record.log", "wb") as log:  # what a failure message quotes
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_live_recording(api: str, recording: subprocess.Popen, log: Path,
                            timeout: float = 120) -> None:
    """Until Prometheus has scraped the recorder with its tree alive; a recorder that exits first,
    or never gets there, fails the test with what it printed and what Prometheus saw."""
    deadline = time.monotonic() + timeout
    while not query(api, "omnitrace_traced_processes > 0"):
        problem = ("the recording ended first" if recording.poll() is not None
                   else "no live tree scraped" if time.monotonic() > deadline else None)
        if problem:
            targets = httpx.get(api + "/api/v1/targets", timeout=10).json()["data"]
            health = [(t["scrapeUrl"], t["health"], t["lastError"])
                      for t in targets["activeTargets"]]
            raise AssertionError(f"{problem} (exit {recording.returncode}); targets {health}; "
                                 f"recorder output:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_every_panel_returns_data_from_a_real_prometheus(prometheus_stack, tmp_path):
    metrics_port, gateway, api = prometheus_stack
    export_verdicts(sample_report("run-1"), pushgateway=gateway)
    export_verdicts(sample_report("run-2"), pushgateway=gateway)
    recording = record_a_row(tmp_path, metrics_port, "under-load/sigkill/worker")
    live_at = None
    try:
        wait_for_live_recording(api, recording, tmp_path / "record.log")
        # Evaluate the panels at the last scrape of the live recording: once it ends, its series
        # go stale, but an instant query at that moment still sees the whole recording.
        while recording.poll() is None:
            now = time.time()  # the instant the query is evaluated at, not after its answer
            if query(api, 'up{job="omnitrace-record"} == 1', now):
                live_at = now
            time.sleep(0.5)
    finally:
        if recording.poll() is None:  # the recorded tree too: it runs in a group of its own
            kill_session(recording)
        recording.wait(30)
    assert recording.returncode == 0 and live_at is not None
    assert query(api, 'omnitrace_current_scenario{row="under-load/sigkill/worker"}', live_at)
    assert query(api, 'omnitrace_http_responses_total{status_code=~"5.."}', live_at)
    assert query(api, 'omnitrace_signals_total{signal="SIGKILL"}', live_at)
    wait_for(api, 'omnitrace_run_scenarios{run_id="run-2"}')
    empty = []
    for name in ("run-overview.json", "live-recording.json"):
        board = dashboard(name)
        for title, expr in panel_queries(board):
            if not query(api, concrete(expr), live_at):
                empty.append(f"{name}: {title}: {expr}")
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                label = re.match(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
                values = {r["metric"].get(label.group(2))
                          for r in query(api, concrete(label.group(1)), live_at)}
                assert values - {None}, f"{name}: variable {variable['name']} has no values"
    assert not empty, "panels without data:\n" + "\n".join(empty)
