"""`python -m omnitrace.inject ...`: the inject group alone, without loading every omnitrace
command (the scenario driver starts the OOM hog this way)."""
import sys

import click

from omnitrace.errors import OmnitraceError
from omnitrace.inject.cli import inject

try:
    sys.exit(inject.main(sys.argv[1:], prog_name="omnitrace inject", standalone_mode=False) or 0)
except OmnitraceError as exc:
    click.echo(f"omnitrace: error: {exc}", err=True)
    sys.exit(2)
except click.ClickException as exc:
    exc.show()
    sys.exit(exc.exit_code)
