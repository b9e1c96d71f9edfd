"""`omnitrace testbed serve|defects`: thin; the behaviour lives in server.py and stage.py."""
from __future__ import annotations

import os
import sys

import click

from omnitrace.gpu import alloc, sim
from omnitrace.testbed import logs
from omnitrace.testbed.orchestrator import Orchestrator
from omnitrace.testbed.config import (DEFECTS, TOPOLOGIES, TestbedConfig, check_defects, parse_share,
                                       parse_size)


@click.group()
def testbed() -> None:
    """A miniature `vllm serve --omni` with switchable known defects."""


@testbed.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port.")
@click.option("--topology", type=click.Choice(sorted(TOPOLOGIES)), default="qwen3-omni",
              show_default=True)
@click.option("--gpu-mem-per-stage", default="2GiB", show_default=True,
              help="GPU memory each stage holds from start to exit.")
@click.option("--step-mem", default="10%", show_default=True,
              help="GPU memory each engine step must be able to allocate (fails under an OOM hog): "
                   "a size, or a share of the device's total.")
@click.option("--tokens-per-s", default=20.0, show_default=True, type=float)
@click.option("--defect", "defects", multiple=True, metavar="NAME",
              help="Switch on a known defect; repeatable. See `omnitrace testbed defects`.")
@click.option("--sim-gpu", type=click.Path(file_okay=False), default=None,
              help=f"Simulated GPU directory (default: ${sim.ENV_VAR} or {sim.DEFAULT_DIR}); "
                   "created with 2 devices of 16 GiB if absent.")
def serve(host, port, topology, gpu_mem_per_stage, step_mem, tokens_per_s, defects, sim_gpu):
    """Serve until SIGTERM/SIGINT. Prints one line to stdout once /health answers 200:
    READY http://HOST:PORT pid=ROOT stages=PID,... gpu=sim:DIR|torch|cupy"""
    step_bytes, step_share = parse_share(step_mem, "--step-mem")
    config = TestbedConfig(topology=topology, defects=check_defects(defects),
                           tokens_per_s=tokens_per_s,
                           stage_mem=parse_size(gpu_mem_per_stage, "--gpu-mem-per-stage"),
                           step_mem=step_bytes, step_mem_fraction=step_share)
    if sim_gpu:
        os.environ[sim.ENV_VAR] = os.path.abspath(sim_gpu)
    if alloc.kind() == "sim":
        # Exported so the stages (spawned, they inherit the environment) use the same device.
        os.environ[sim.ENV_VAR] = str(sim.ensure_device(sim.location()))
        gpu = f"sim:{os.environ[sim.ENV_VAR]}"
    else:
        gpu = alloc.kind()
    logs.setup("APIServer")
    orch = Orchestrator(config)
    orch.spawn()   # stages boot while the web stack is imported: ready sooner
    from omnitrace.testbed.server import serve as run_server
    sys.exit(run_server(host, port, config, orch, gpu))


@testbed.command()
def defects() -> None:
    """List the known defects, one line each."""
    width = max(map(len, DEFECTS))
    for name, what in DEFECTS.items():
        click.echo(f"{name:<{width}}  {what}")
