"""`python -m services.cli definitions ...` (see services/cli/definitions.py)."""

from __future__ import annotations

import typer

from services.cli.definitions import cli as definitions_cli

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="StreamSeg command line")
cli.add_typer(definitions_cli, name="definitions")

if __name__ == "__main__":
    cli()
