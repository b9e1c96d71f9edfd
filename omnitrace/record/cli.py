"""`omnitrace record` and `omnitrace doctor`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from omnitrace.errors import OmnitraceError
from omnitrace.record.recorder import Recorder, RecordOptions


def _default_output() -> Path:
    return Path(time.strftime("omnitrace-%Y%m%d-%H%M%S.jsonl"))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Timeline file to write (default: omnitrace-<date>-<time>.jsonl).")
@click.option("--attach", "attach", type=int, multiple=True, metavar="PID",
              help="Also trace this existing process and its descendants (repeatable).")
@click.option("--all", "trace_all", is_flag=True, help="Trace every process on the machine.")
@click.option("--cgroup", "cgroup_path", metavar="PATH",
              help="Also trace every process in this cgroup v2 group and its subgroups, those "
                   "there now and those started later (a directory on the cgroup2 mount, or the "
                   "path /proc/PID/cgroup shows). Needs BPF.")
@click.option("--container", metavar="NAME|ID",
              help="Trace a running podman or docker container: its cgroup, as --cgroup.")
@click.option("--follow-containers", is_flag=True,
              help="Also trace every container whose cgroup is made while recording (its name "
                   "carries a 64-hex container id: podman, docker, containerd, CRI-O), from its "
                   "first process on: a container a daemon starts for the command is not its "
                   "descendant. Needs BPF.")
@click.option("--no-bpf", is_flag=True, help="Do not load BPF: poll procfs instead (lower precision).")
@click.option("--snapshot-interval", default=1.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between procfs snapshots of each traced process.")
@click.option("--linger", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to keep recording after the command exits while its descendants end.")
@click.option("--keep-root", is_flag=True, help="Under sudo, run the command as root too.")
@click.option("--gpu", type=click.Choice(["auto", "nvml", "sim", "off"]), default="auto",
              show_default=True, help="GPU memory source.")
@click.option("--health-url", metavar="URL",
              help="Health endpoint to probe (default: discovered from the server's port).")
@click.option("--health-rate", "health_rate", type=click.FloatRange(0), default=20.0,  # http.PROBE_HZ
              show_default=True, metavar="HZ",
              help="Health probes per second; 0 turns the prober off. Written in the header: "
                   "probing can change how a server behaves (docs/recorder.md).")
@click.option("--no-health", is_flag=True, help="Do not probe health (= --health-rate 0).")
@click.option("--no-otlp", is_flag=True, help="Do not run the OTLP span receiver.")
@click.option("--metrics-port", type=int, metavar="PORT",
              help="Serve live Prometheus metrics on this port while recording.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address for --metrics-port.")
@click.option("--matrix", "matrix_file", metavar="FILE", envvar="OMNITRACE_MATRIX",
              help="The fault-injection matrix this recording is for (a YAML file or "
                   "'vllm-omni'; env OMNITRACE_MATRIX): written into the header, so verify "
                   "checks against it anywhere.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(output, attach, trace_all, cgroup_path, container, follow_containers, no_bpf, snapshot_interval, linger, keep_root, gpu,
           health_url, health_rate, no_health, no_otlp, metrics_port, metrics_host, matrix_file,
           command):
    """Run COMMAND and record what happens to its process tree.

    \b
      sudo omnitrace record -o run.jsonl -- pytest tests/reliability
      sudo omnitrace record --attach 4123 -o run.jsonl
      sudo omnitrace record --container vllm -o run.jsonl
    """
    options = RecordOptions(output=output or _default_output(), command=list(command),
                            attach=list(attach), trace_all=trace_all, no_bpf=no_bpf,
                            snapshot_interval_s=snapshot_interval, linger_s=linger,
                            keep_root=keep_root, follow_containers=follow_containers)
    _resolve_group(options, cgroup_path, container)
    if follow_containers:  # a scenario driver says whether a daemon's container is recorded
        from omnitrace.container import FOLLOWS_CONTAINERS_ENV
        options.env[FOLLOWS_CONTAINERS_ENV] = "1"
    if matrix_file:  # read before anything runs: a bad file stops here, exit 2
        from omnitrace.verify.matrix import BUILTIN, header_entry, load_matrix
        options.header["matrix"] = header_entry(load_matrix(matrix_file))
        # the command (the pytest plugin) injects by the same matrix's role patterns
        options.env["OMNITRACE_MATRIX"] = (matrix_file if matrix_file == BUILTIN
                                           else str(Path(matrix_file).resolve()))
    from omnitrace.record.wiring import evidence_sources, live_observers
    rate = 0.0 if no_health else health_rate
    options.header["health_rate_hz"] = rate  # also when off: a reader must know nothing probed
    options.env["OMNITRACE_HEALTH_RATE_HZ"] = f"{rate:g}"  # a scenario driver polls no faster
    options.extra_sources = evidence_sources(gpu=gpu, health_url=health_url, health_hz=rate,
                                             otlp=not no_otlp)
    stoppers = []
    if metrics_port is not None:
        observer, stop = live_observers(metrics_host, metrics_port)
        options.observers.append(observer)
        stoppers.append(stop)
    try:
        result = Recorder(options).run()
    finally:
        for stop in stoppers:
            stop()
    click.echo(result.summary(), err=True)
    sys.exit(result.exit_status if result.exit_status is not None else 0)


def _resolve_group(options: RecordOptions, cgroup_path: str | None,
                   container: str | None) -> None:
    """--cgroup / --container into the group to filter on; a bad one stops here (exit 2)."""
    from omnitrace.record.cgroup import resolve_container, resolve_group
    if cgroup_path and container:
        raise OmnitraceError("--cgroup and --container: give one (a container is its cgroup)")
    if cgroup_path:
        options.cgroup = resolve_group(cgroup_path)
    elif container:
        options.container = resolve_container(container)
        options.cgroup = options.container.group


@click.command()
def doctor():
    """Check what the full-fidelity recorder needs; print the fix for each missing piece."""
    from omnitrace.record.doctor import run_checks
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "ok  " if check.ok else ("warn" if check.optional else "FAIL")
        click.echo(f"{mark}  {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            click.echo(f"      {'':<{width}}  fix: {check.fix}")
    failed = [c for c in checks if not c.ok and not c.optional]
    if failed:
        click.echo(f"{len(failed)} check(s) failed: the recorder would fall back to procfs polling.")
        sys.exit(1)
    click.echo("the full-fidelity recorder can run here.")


__all__ = ["record", "doctor", "OmnitraceError"]
