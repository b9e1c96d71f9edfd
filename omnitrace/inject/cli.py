"""`omnitrace inject signal|oom`, `omnitrace load`; `omnitrace matrix run` is defined here and
attached to the verify engineer's `matrix` group."""
from __future__ import annotations

import asyncio
import sys

import click

from omnitrace.events import signal_name


@click.group()
def inject() -> None:
    """Inject a fault: a signal into a server's process tree, a GPU memory hog, or an abnormal
    request."""


@inject.command("signal")
@click.option("--server", "server", type=int, default=None,
              help="pid of the server's root process (or give --container)")
@click.option("--container", "container", metavar="NAME|ID", default=None,
              help="a running container: its init is the server's root, by host pid")
@click.option("--runtime", type=click.Choice(["podman", "docker"]), default=None,
              help="the container's runtime  [default: podman if installed, else docker]")
@click.option("--target", default="worker", show_default=True,
              help="worker, serve, all, a pid in the tree, or text matched against name + cmdline")
@click.option("--signal", "sig", default="TERM", show_default=True, help="KILL, TERM or INT")
@click.option("--scenario", default=None, help="matrix row id to name in the fault mark")
@click.option("--matrix", "matrix_file", metavar="FILE", default=None,
              help="the matrix whose role patterns say which process is a worker (give verify "
                   "the same file)  [default: the built-in vllm-omni matrix]")
def signal_cmd(server: int | None, container: str | None, runtime: str | None, target: str,
               sig: str, scenario: str | None, matrix_file: str | None) -> None:
    """Signal processes of a server's tree by role, inside a fault mark."""
    from omnitrace.inject.roles import matrix_patterns
    from omnitrace.inject.signals import inject_signal
    server = _server_root(server, container, runtime)
    fault = inject_signal(server, target, sig, scenario=scenario,
                          patterns=matrix_patterns(matrix_file))
    click.echo(f"sent {signal_name(fault.signal)} to {', '.join(map(str, fault.pids)) or 'nothing'}"
               + (f" (already gone: {', '.join(map(str, fault.missed))})" if fault.missed else ""))
    for why in fault.dropped.values():
        click.echo(f"warning: {why}", err=True)


def _server_root(server: int | None, container: str | None, runtime: str | None) -> int:
    """The tree's root: --server's pid, or the host pid of --container's init (its tree is then
    the only one signalled: everything outside the container is refused like any pid outside
    the server's tree)."""
    if (server is None) == (container is None):
        raise click.UsageError("give exactly one of --server PID and --container NAME|ID")
    if server is not None:
        return server
    from omnitrace.container import default_runtime, running_init
    found = running_init(container, runtime or default_runtime())
    click.echo(f"{found.describe()}", err=True)
    return found.init_pid


def _devices(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give device indices like 0,1") from None


@inject.command("oom")
@click.option("--devices", default="0", show_default=True, help="comma-separated GPU indices")
@click.option("--ratio", type=float, default=0.92, show_default=True, help="share of free memory to take")
@click.option("--strict", is_flag=True, help="after 256 MiB chunks, fill 64/16/4/1 MiB tails")
@click.option("--hold", "hold_s", type=float, default=600.0, show_default=True,
              help="seconds to hold before releasing by itself")
def oom_cmd(devices: str, ratio: float, strict: bool, hold_s: float) -> None:
    """Fill free GPU memory and hold it; prints READY (or ERROR and exits 2)."""
    from omnitrace.inject.oom import run_hog
    try:
        import setproctitle  # the verifier recognises the hog by its title
        setproctitle.setproctitle("omnitrace oom-hog " + " ".join(sys.argv[1:]))
    except ImportError:
        pass
    code = run_hog(_devices(devices), ratio, strict, hold_s)
    if code:
        sys.exit(code)


# One-line errors (omnitrace: error: ...), naming the option, as for every other bad input.
def _variant(ctx, param, variant: str) -> str:
    from omnitrace.errors import OmnitraceError
    from omnitrace.inject.input_variants import VARIANTS
    if variant not in VARIANTS:
        raise OmnitraceError(f"--variant {variant!r}: unknown; one of {', '.join(VARIANTS)}")
    return variant


def _base_url(ctx, param, url: str) -> str:
    from omnitrace.errors import OmnitraceError
    if not url.startswith(("http://", "https://")):
        raise OmnitraceError(f"--url {url!r}: give the server's base URL, e.g. "
                             "http://127.0.0.1:8000")
    return url.rstrip("/")


@inject.command("input")
@click.option("--variant", required=True, callback=_variant,
              help="which abnormal request to send: malformed-json, messages-wrong-type, "
                   "unknown-model, empty-body, wrong-content-type, invalid-utf8, oversized "
                   "(docs/matrix-run.md says what each sends)")
@click.option("--url", required=True, callback=_base_url,
              help="the server's base URL, e.g. http://127.0.0.1:8000")
@click.option("--model", default=None, metavar="NAME",
              help="the model valid parts of the request name  [default: the first of GET "
                   "/v1/models]")
@click.option("--recovery/--no-recovery", default=True, show_default=True,
              help="then send one valid chat request, as the input-recovery rule expects")
@click.option("--keyword", default=None, help="the recovery answer must contain this word")
@click.option("--scenario", default=None, help="matrix row id to name in the input mark")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="client timeout of each request, seconds")
def input_cmd(variant, url, model, recovery, keyword, scenario, timeout_s) -> None:
    """Send one abnormal request inside an input mark, then (by default) a valid one.

    Exit status: 0 the bad request got a 4xx with an OpenAI error body and the recovery (if
    sent) a 2xx; 1 otherwise; 2 for bad options or a server that cannot be reached."""
    from omnitrace.errors import OmnitraceError
    from omnitrace.inject.abnormal import send_input, send_recovery
    from omnitrace.inject.load import discover_model
    model = model or discover_model(url)
    bad = send_input(url, variant, model, scenario=scenario, timeout_s=timeout_s)
    if bad.end_reason == "refused":
        raise OmnitraceError(f"--url {url}: connection refused; is the server running there?")
    click.echo(f"{variant}: {_outcome(bad)}")
    ok = bad.status is not None and 400 <= bad.status < 500 and bool(bad.openai_error)
    if recovery:
        result, found = send_recovery(url, model, keyword, timeout_s)
        kw = "" if found is None else f", keyword {keyword!r} {'found' if found else 'missing'}"
        click.echo(f"recovery: {_outcome(result)}{kw}")
        ok = ok and result.end_reason == "completed" and found is not False
    if not ok:
        raise click.exceptions.Exit(1)


def _outcome(result) -> str:
    body = "" if result.openai_error is None else (
        ", OpenAI error body" if result.openai_error else ", not an OpenAI error body")
    answer = f"HTTP {result.status}" if result.status is not None else result.end_reason
    return f"{answer} after {result.duration_s:.3f} s{body}"


@click.command()
@click.option("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
@click.option("--kind", type=click.Choice(["chat", "chat-stream", "speech", "mix"]), default="chat",
              show_default=True)
@click.option("--rate", type=float, default=2.0, show_default=True, help="requests started per second")
@click.option("--requests", "count", type=int, default=10, show_default=True)
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="per-request client timeout, seconds")
@click.option("--model", default=None, metavar="NAME",
              help="the model the requests name  [default: the first of GET /v1/models; none "
                   "when the server lists none]")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--min-tokens", type=click.IntRange(min=0), default=None,
              help="vLLM generates at least this many tokens")
@click.option("--ignore-eos", is_flag=True, help="keep generating past end-of-sequence (vLLM)")
def load(url: str, kind: str, rate: float, count: int, concurrency: int, timeout_s: float,
         model: str | None, max_tokens: int, min_tokens: int | None, ignore_eos: bool) -> None:
    """Send HTTP load; each request is an OpenTelemetry span. Ends with a summary table."""
    from omnitrace.inject.load import Load, RequestShape, discover_model, summary_table
    if rate <= 0 or count < 1 or concurrency < 1:
        raise click.BadParameter("--rate must be > 0, --requests and --concurrency >= 1")
    if model is None:
        model = discover_model(url)
        click.echo(f"model: {model} (from {url.rstrip('/')}/v1/models)" if model else
                   "model: none named (the server listed none)", err=True)
    runner = Load(url, kind, rate, count, concurrency, timeout_s, model,
                  shape=RequestShape(max_tokens, min_tokens, ignore_eos))
    results = asyncio.run(asyncio.wait_for(runner.run(), runner.bound_s()))
    click.echo(summary_table(results))


@click.command("run")
@click.option("--serve", metavar="CMD", default=None,
              help="server command; {port} becomes a free port (default: the built-in testbed)")
@click.option("--url", metavar="URL", default=None,
              help="the server's base URL  [default: http://127.0.0.1:{port}]")
@click.option("--matrix", "matrix_file", metavar="FILE", default=None,
              help="a matrix YAML file (default: the built-in vllm-omni matrix)")
@click.option("--scenarios", "glob", metavar="GLOB", default=None,
              help="run only rows whose id matches, e.g. 'under-load/*'; several globs "
                   "separated by commas")
@click.option("--out", metavar="DIR", default=None,
              help="keep each row's timeline, log and DIR/report.json here")
@click.option("--no-bpf", is_flag=True, help="record with procfs polling instead of BPF")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="max_tokens of each load request  [default: the matrix's load_settings, else 64]")
@click.option("--min-tokens", type=click.IntRange(min=0), default=None,
              help="min_tokens of each load request (vLLM generates at least this many)")
@click.option("--ignore-eos/--no-ignore-eos", default=None,
              help="ask the server to keep generating past end-of-sequence (vLLM's ignore_eos)")
@click.option("--startup-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="seconds each row waits for the server's /health 200 (a real engine on a busy "
                   "CPU machine can take minutes)")
@click.option("--health-rate", type=click.FloatRange(min=0), default=20.0, show_default=True,
              metavar="HZ", help="the recorder's health probes per second; 0: none (rules that "
                                 "rest on probes then say so: docs/matrix-run.md)")
@click.option("-v", "--verbose", is_flag=True, help="show evidence for passing rules too")
def matrix_run(serve, url, matrix_file, glob, out, no_bpf, max_tokens, min_tokens, ignore_eos,
               startup_timeout, health_rate, verbose):
    """Run matrix rows against a server, each in its own recording, then verify them.

    Exit status as verify: 0 all pass, 1 any failure (or a row that could not run), 2 bad input."""
    from omnitrace.inject.runner import run_matrix, runs_table
    from omnitrace.verify.matrix import load_matrix
    from omnitrace.verify.table import render
    matrix = load_matrix(matrix_file)
    overrides = {"max_tokens": max_tokens, "min_tokens": min_tokens, "ignore_eos": ignore_eos}
    record_args = ["--health-rate", f"{health_rate:g}"] + (["--no-bpf"] if no_bpf else [])
    report, runs, code, kept = run_matrix(matrix, serve, url, glob, out, record_args, overrides,
                                          startup_timeout)
    click.echo(render(report, verbose))
    click.echo("")
    click.echo(runs_table(runs, report))
    if kept:
        click.echo(f"timelines and report.json in {kept}")
    raise click.exceptions.Exit(code)
