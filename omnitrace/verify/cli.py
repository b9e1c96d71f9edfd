"""`omnitrace verify` and `omnitrace matrix show`: parse, call, print."""
from __future__ import annotations

import json

import click

from omnitrace.errors import OmnitraceError
from omnitrace.timeline import read_timeline, settle_for_analysis
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.junit import to_junit
from omnitrace.verify.matrix import BUILTIN_FALLBACK, load_matrix, matrix_for, row_entry
from omnitrace.verify.rules import RULES
from omnitrace.verify.table import render

MATRIX_HELP = "a matrix YAML file (default: the built-in vllm-omni matrix)"
VERIFY_MATRIX_HELP = ("a matrix YAML file (default: the one the recording's header carries, "
                      "else the built-in vllm-omni matrix)")


@click.command()
@click.argument("timeline", type=click.Path(dir_okay=False))
@click.option("--matrix", "matrix_file", metavar="FILE", help=VERIFY_MATRIX_HELP)
@click.option("--scenario", "scenario_glob", metavar="GLOB",
              help="check only scenarios whose id matches, e.g. 'under-load/*'")
@click.option("--json", "json_out", metavar="OUT", help="write the JSON report here ('-' = stdout)")
@click.option("--junit", "junit_out", metavar="OUT", help="write JUnit XML here")
@click.option("--strict", is_flag=True, help="inconclusive verdicts fail too")
@click.option("--lenient", is_flag=True, help="skip corrupt timeline lines instead of stopping")
@click.option("-v", "--verbose", is_flag=True, help="show evidence for passing rules too")
@click.option("--prometheus-textfile", metavar="FILE",
              help="write verdict metrics here (node_exporter textfile collector)")
@click.option("--pushgateway", metavar="URL", help="push verdict metrics to this Pushgateway")
def verify(timeline, matrix_file, scenario_glob, json_out, junit_out, strict, lenient, verbose,
           prometheus_textfile, pushgateway):
    """Check TIMELINE against the fault-injection matrix it was recorded with (its header names
    it; --matrix overrides; without either, the built-in one).

    Exit status: 0 all pass, 1 any failure (or inconclusive with --strict), 2 bad input,
    including a scenario with no row in the matrix."""
    loaded = read_timeline(timeline, lenient=lenient)
    matrix, origin = matrix_for(loaded.header, matrix_file, timeline)
    settle_for_analysis()
    report = verify_timeline(loaded, matrix, scenario_glob)
    if origin == BUILTIN_FALLBACK:
        report.warnings.append(f"checked against {origin}")
    if prometheus_textfile or pushgateway:
        from omnitrace.export.prometheus import export_verdicts
        export_verdicts(report, prometheus_textfile, pushgateway, header=loaded.header)
    if json_out == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report, verbose))
        if json_out:
            with open(json_out, "w", encoding="utf-8") as out:
                json.dump(report.to_dict(), out, indent=2)
    if junit_out:
        with open(junit_out, "w", encoding="utf-8") as out:
            out.write(to_junit(report, strict))
    _fail_on_rowless(report, matrix.name, origin)
    raise click.exceptions.Exit(report.exit_code(strict))


def _fail_on_rowless(report, matrix_name: str, origin: str) -> None:
    """A scenario the matrix has no row for was checked against nothing: that is the wrong
    matrix (or a recording of another one), never a pass."""
    rowless = [s.id for s in report.scenarios if s.row is None]
    if rowless:
        raise OmnitraceError(f"{len(rowless)} scenario(s) have no row in matrix {matrix_name} "
                             f"(from {origin}), so nothing was checked: {', '.join(rowless)}; "
                             f"give the matrix it was recorded with: --matrix FILE")


@click.group()
def matrix() -> None:
    """The fault-injection matrix: rows, rules and thresholds."""


@matrix.command("show")
@click.option("--matrix", "matrix_file", metavar="FILE", help=MATRIX_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
def show(matrix_file, as_json):
    """Print the matrix: every row with its rules and thresholds."""
    m = load_matrix(matrix_file)
    if as_json:
        click.echo(json.dumps({"matrix": m.name, "sources": m.sources,
                               "rows": [row_entry(r) for r in m.rows]}, indent=2))
        return
    click.echo(f"matrix {m.name}: {m.description}  ({', '.join(m.sources)})")
    for r in m.rows:
        used = sorted({k for rule in r.rules for k in _rule_keys(rule)})
        limits = ", ".join(f"{k}={r.thresholds[k]:g}" for k in used)
        issues = f"  [{', '.join(r.issues)}]" if r.issues else ""
        variant = f", input={r.input}" if r.input else ""
        click.echo(f"\n{r.id}  (load={'yes' if r.load else 'no'}, fault={r.fault}{variant}, "
                   f"target={r.target}{', supervised' if r.supervise is not None else ''}, "
                   f"observe {r.observe_s:g} s){issues}")
        click.echo(f"  {r.behaviour}")
        if r.source:
            click.echo(f"  source: {r.source}")
        click.echo(f"  rules: {', '.join(r.rules)}")
        click.echo(f"  thresholds: {limits}")


def _rule_keys(rule_id: str) -> tuple[str, ...]:
    return RULES[rule_id].thresholds


def _attach_run() -> None:
    from omnitrace.inject.cli import matrix_run  # the runner lives with injection (docs/matrix-run.md)
    matrix.add_command(matrix_run)


_attach_run()
