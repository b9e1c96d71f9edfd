"""`omnitrace report`: the page loads in headless Chromium without errors, every scenario is drawn,
and a screenshot is taken."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from omnitrace.cli import main
from tests.test_export_helpers import SCENARIOS, STAGES, write_synthetic
from tests.test_export_metrics import sample_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (make setup installs it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def report_page(tmp_path):
    recording = write_synthetic(tmp_path / "run.jsonl")
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(json.dumps(sample_report()))
    page = tmp_path / "report.html"
    assert main(["report", str(recording), "-o", str(page), "--verdicts", str(verdicts)]) == 0
    return page


def test_report_is_self_contained(report_page):
    text = report_page.read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)
    assert "<script" not in text


def test_report_loads_in_chromium_and_draws_every_scenario(report_page, tmp_path):
    result = chromium(tmp_path, "--dump-dom", report_page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    errors = [line for line in result.stderr.splitlines()
              if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]
    assert not errors, errors
    sections = re.findall(r'<section class="scenario"[^>]*data-scenario="([^"]*)"', dom)
    assert sections == list(SCENARIOS)
    assert dom.count('<div class="picture">') == len(SCENARIOS)
    # the SIGKILLed stage has a lifeline, its signal, exit and reap markers in the first picture
    first = dom.split('<section class="scenario"')[1]
    assert f"pid {STAGES[0]} VLLM::StageEngineCoreProc_stage0" in first
    assert 'class="sig"' in first and 'class="exit"' in first and 'class="reap"' in first
    assert 'class="gpu"' in first and 'class="http server"' in first
    # the verdict table carries verify's figures
    assert 'class="v fail">fail' in dom and "40 ms" in dom


def test_report_screenshot_shows_the_pictures(report_page, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, "--window-size=1200,1400", f"--screenshot={shot}",
                      report_page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 1400)
    assert len(png) > 30_000   # a blank page compresses to a few kB; pictures do not


def test_report_without_scenarios_draws_the_whole_recording(tmp_path):
    from omnitrace.events import Exit, Fork
    from omnitrace.timeline import make_header, write_timeline
    path = tmp_path / "plain.jsonl"
    write_timeline(path, make_header(["sleep", "1"], {"kernel": {}}),
                   [Fork(t=10, pid=5, tid=5, ppid=1), Exit(t=20, pid=5, tid=5)], {"t": 30})
    page = tmp_path / "plain.html"
    assert main(["report", str(path), "-o", str(page), "--verdicts", str(_empty(tmp_path))]) == 0
    text = page.read_text()
    assert text.count('<section class="scenario"') == 1 and "whole recording" in text


def _empty(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text('{"scenarios": []}')
    return path


# --- real recordings ------------------------------------------------------------------------------
MATRIX_VLLM = "examples/vllm-cpu/matrix.yaml"


def loaded_dom(tmp_path, page) -> str:
    """The page as headless Chromium built it; no console error on the way."""
    result = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines()
              if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]
    assert not errors, errors
    return result.stdout


def first_picture(dom: str) -> str:
    return dom.split('<div class="picture">')[1].split("</div>")[0]


def screenshot(tmp_path, page, name: str) -> bytes:
    shot = tmp_path / name
    result = chromium(tmp_path, "--window-size=1200,1000", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    return shot.read_bytes()


def test_real_vllm_report_names_orphans_window_and_health_on_one_screen(vllm_sigkill_serve,
                                                                        tmp_path):
    """vLLM's API server SIGKILLed: its engine core and resource tracker are orphans of the
    scenario driver (a subreaper) until it kills them after the window."""
    page = tmp_path / "vllm.html"
    assert main(["report", str(vllm_sigkill_serve), "-o", str(page), "--matrix", MATRIX_VLLM]) == 0
    dom = loaded_dom(tmp_path, page)
    title = re.search(r"<title>(.*)</title>", dom).group(1)
    assert title.startswith("no-load/sigkill/serve · vllm serve tiny --host") and title.endswith(
        "· fail")
    picture = first_picture(dom)
    # orphans drawn as orphans from the fault on, named with who adopted them
    orphans = re.findall(r'<line class="life orphan"[^>]*><title>pid (\d+) ', picture)
    assert sorted(orphans) == ["10380", "10381", "10784"]
    assert "→ 9711 (the runner)" in picture
    assert "(the recorded command, a subreaper): 10380 python3" in dom
    # the window's end, and after it the runner's clean-up set apart
    assert picture.count('class="window-end"') == 2 and 'class="after"' in picture  # 2 bands
    assert "window end +40.1 s" in picture
    # 2909 probes are a few runs; the 13 answers before the fault are read in words
    runs = re.findall(r'<rect class="http (\w+)"', picture)
    assert 3 <= len(runs) <= 6 and "ok" in runs
    assert "→ HTTP 200 ×13 (-0.646 to -0.039 s) → reset (+0.006 s) →" in dom
    # one triangle per signal however many threads it reached
    kills = re.findall(r'<path class="sig"[^>]*><title>SIGKILL from pid \d+ python3 \(default\)',
                       picture)
    assert len(kills) == 4
    # the helpers share a row; the rows that matter fit one screen
    assert "14 short-lived helpers" in picture and '<details class="helpers">' in dom
    assert picture.count('<text class="proc"') <= 8
    # the simulated GPUs nobody used are not drawn
    assert 'class="gpu"' not in dom and "none used by the server's tree" in dom
    assert len(screenshot(tmp_path, page, "vllm.png")) > 30_000


@pytest.mark.slow
def test_testbed_report_draws_its_gpu_and_the_stages_orphaned_to_the_runner(
        testbed_sigkill_serve, tmp_path):
    path, report = testbed_sigkill_serve
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(json.dumps(report))
    page = tmp_path / "testbed.html"
    assert main(["report", str(path), "-o", str(page), "--verdicts", str(verdicts)]) == 0
    dom = loaded_dom(tmp_path, page)
    title = re.search(r"<title>(.*)</title>", dom).group(1)
    assert title.startswith("no-load/sigkill/serve · python -m omnitrace.cli testbed serve")
    assert title.endswith(f"· {report['scenarios'][0]['verdict']}")
    picture = first_picture(dom)
    assert len(re.findall(r'<line class="life orphan"', picture)) >= 3   # the stage engines
    assert "(the runner)" in picture and 'class="window-end"' in picture
    assert 'class="gpu"' in picture                                      # the stages held memory
    assert len(screenshot(tmp_path, page, "testbed.png")) > 20_000


def test_a_fault_late_in_a_long_window_gets_a_closer_picture(tmp_path):
    """100 s of start-up, the fault at +95 s: the aftermath would be a few pixels wide."""
    from omnitrace.events import Fork, Span
    from omnitrace.timeline import make_header, write_timeline
    s = 1_000_000_000

    def mark(t, end, kind, **attrs):
        return Span(t=t, end=end, name=kind, source="otlp", attributes={
            "omnitrace.mark": kind, "omnitrace.scenario": "no-load/sigkill/serve",
            "omnitrace.server.pid": 500, **attrs})

    path = tmp_path / "late.jsonl"
    write_timeline(path, {**make_header(["driver"], {"kernel": {}}), "t0": 0},
                   [Fork(t=1 * s, pid=500, tid=500, ppid=1, comm="server"),
                    mark(1 * s, 100 * s, "scenario"),
                    mark(95 * s, 95 * s + 1000, "fault", **{"omnitrace.fault.signal": "SIGKILL",
                                                           "omnitrace.fault.pids": [500]})],
                   {"t": 101 * s})
    page = tmp_path / "late.html"
    assert main(["report", str(path), "-o", str(page), "--verdicts", str(_empty(tmp_path))]) == 0
    text = page.read_text()
    assert text.count('<div class="picture">') == 2
    assert "<h3>around the fault: -6 s to +6 s</h3>" in text
