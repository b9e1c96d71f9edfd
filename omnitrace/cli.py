"""The `omnitrace` command: a click group. Thin by design: parse, call, print.

Each command lives beside the code it drives (e.g. omnitrace/record/cli.py) and is registered
here, so this file stays a table of contents.
"""
from __future__ import annotations

import importlib
import sys

import click

from omnitrace import __version__
from omnitrace.errors import OmnitraceError

# (module, attribute): each attribute is a click command or group.
COMMANDS = [
    ("omnitrace.record.cli", "record"),
    ("omnitrace.record.cli", "doctor"),
    ("omnitrace.show", "show"),
    ("omnitrace.verify.cli", "verify"),
    ("omnitrace.verify.cli", "matrix"),
    ("omnitrace.testbed.cli", "testbed"),
    ("omnitrace.export.cli", "export"),
    ("omnitrace.export.cli", "report"),
    ("omnitrace.inject.cli", "inject"),
    ("omnitrace.inject.cli", "load"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnitrace")
def cli() -> None:
    """Record and verify how an LLM serving process tree behaves under faults."""


def _register() -> None:
    for module_name, attr in COMMANDS:
        module = importlib.import_module(module_name)
        cli.add_command(getattr(module, attr))


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        return cli.main(args=argv, prog_name="omnitrace", standalone_mode=False) or 0
    except OmnitraceError as exc:
        click.echo(f"omnitrace: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("omnitrace: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
