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
    assert dom.count("<svg") == len(SCENARIOS)
    # the SIGKILLed stage has a lifeline, its signal, exit and reap markers in the first picture
    first = dom.split('<section class="scenario"')[1]
    assert f"{STAGES[0]} VLLM::StageEngineCoreProc_stage0" in first
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
