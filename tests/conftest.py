"""Recordings that `show` and `report` tests share: one of real vLLM (stored), one of the testbed
(recorded once per session by `omnitrace matrix run`, as a user makes one)."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from tests.harness import matrix_run

DATA = Path(__file__).parent / "data"
SIGKILL_SERVE = "no-load/sigkill/serve"


@pytest.fixture(scope="session")
def vllm_sigkill_serve(tmp_path_factory) -> Path:
    """Real vLLM 0.32 (CPU build), SIGKILL to `vllm serve`: its VLLM::EngineCore and VLLM::Worker
    outlive it, re-parented to the scenario driver (a subreaper), which kills them at clean-up."""
    path = tmp_path_factory.mktemp("vllm") / "vllm-sigkill-serve.jsonl"
    with gzip.open(DATA / "vllm-sigkill-serve.jsonl.gz", "rb") as packed, open(path, "wb") as out:
        shutil.copyfileobj(packed, out)
    return path


@pytest.fixture(scope="session")
def testbed_sigkill_serve(tmp_path_factory) -> tuple[Path, dict]:
    """The testbed's row no-load/sigkill/serve run by `omnitrace matrix run`: (timeline, report)."""
    out = tmp_path_factory.mktemp("testbed")
    env = {**os.environ, "OMNITRACE_SIM_GPU": str(out / "gpu"), "PYTHONPATH": os.getcwd()}
    cli, report = matrix_run(out / "run", "--scenarios", SIGKILL_SERVE, env=env, timeout=280)
    assert report is not None, cli.stderr[-3000:]
    return out / "run" / "no-load_sigkill_serve.jsonl", report
