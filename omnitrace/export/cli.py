"""`omnitrace export perfetto|otlp` and `omnitrace report`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from omnitrace.errors import OmnitraceError
from omnitrace.timeline import Timeline, read_timeline
from omnitrace.verify.matrix import Matrix, matrix_for

_TIMELINE = click.argument("timeline_file", metavar="FILE", type=click.Path(dir_okay=False))
_LENIENT = click.option("--lenient", is_flag=True, help="Skip corrupt lines instead of stopping.")


def _read(path: str, lenient: bool) -> Timeline:
    timeline = read_timeline(path, lenient=lenient)
    for warning in timeline.warnings:
        click.echo(f"omnitrace: warning: {warning}", err=True)
    return timeline


@click.group()
def export() -> None:
    """Convert a timeline for other tools (Perfetto, OpenTelemetry)."""


@export.command()
@_TIMELINE
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Trace file to write (open it at ui.perfetto.dev).")
@_LENIENT
def perfetto(timeline_file: str, output: str, lenient: bool) -> None:
    """Write FILE as Chrome trace-event JSON for ui.perfetto.dev."""
    from omnitrace.export.perfetto import export_perfetto
    trace = export_perfetto(_read(timeline_file, lenient), output)
    click.echo(f"wrote {output}: {len(trace['traceEvents'])} trace events")


@export.command()
@_TIMELINE
@click.option("--endpoint", metavar="URL",
              help="OTLP/HTTP base URL of a collector, e.g. http://127.0.0.1:4318.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the OTLP JSON file format (JSON Lines) here.")
@_LENIENT
def otlp(timeline_file: str, endpoint: str | None, output: str | None, lenient: bool) -> None:
    """Send FILE as OpenTelemetry spans and logs to a collector, or write them as OTLP JSON."""
    if not endpoint and not output:
        raise OmnitraceError("export otlp: give --endpoint URL or -o FILE (or both)")
    from omnitrace.export.otlp import export_otlp
    spans, records = export_otlp(_read(timeline_file, lenient), endpoint=endpoint, out=output)
    where = " and ".join(x for x in (endpoint, output) if x)
    click.echo(f"exported {spans} spans and {records} log records to {where}")


@click.command()
@_TIMELINE
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HTML file to write.")
@click.option("--verdicts", "verdicts_file", type=click.Path(dir_okay=False, exists=True),
              help="Use this `omnitrace verify --json` output instead of verifying again.")
@click.option("--matrix", "matrix_file", metavar="FILE",
              help="The matrix to verify with and whose patterns name the roles (default: the "
                   "one the recording carries, else the built-in one).")
@_LENIENT
def report(timeline_file: str, output: str, verdicts_file: str | None, matrix_file: str | None,
           lenient: bool) -> None:
    """Write one self-contained HTML page: verdicts and a timeline picture per scenario."""
    from omnitrace.export.html import export_html
    timeline = _read(timeline_file, lenient)
    matrix, _ = matrix_for(timeline.header, matrix_file, timeline_file)
    verdicts = _load_verdicts(verdicts_file) if verdicts_file else _verify(timeline, matrix)
    export_html(timeline, output, verdicts, matrix.patterns)
    click.echo(f"wrote {output}")


def _load_verdicts(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OmnitraceError(f"--verdicts {path}: not JSON ({exc}); give `omnitrace verify --json` "
                             "output") from None


def _verify(timeline: Timeline, matrix: Matrix) -> dict:
    """Verdicts from verify's engine against `matrix`, as its documented JSON dict."""
    from omnitrace.verify.engine import verify_timeline
    return verify_timeline(timeline, matrix).to_dict()
