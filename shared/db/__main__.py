"""`python -m shared.db upgrade|current`: apply or show migrations for the configured database."""

from __future__ import annotations

import asyncio

import typer

from shared.db.engine import create_engine
from shared.db.migrate import current_revision, head_revision, upgrade
from shared.settings import DatabaseSettings

cli = typer.Typer(add_completion=False, help="StreamSeg database migrations")


@cli.command("upgrade")
def upgrade_cmd() -> None:
    """Apply every pending migration."""
    settings = DatabaseSettings()

    async def run() -> None:
        engine = create_engine(
            settings.database_url, settings.database_schema, tls=settings.postgres_tls()
        )
        try:
            await upgrade(engine, settings.database_schema)
            typer.echo(f"schema {settings.database_schema!r} at {head_revision()}")
        finally:
            await engine.dispose()

    asyncio.run(run())


@cli.command("current")
def current_cmd() -> None:
    """Print the applied revision and the newest one this code knows."""
    settings = DatabaseSettings()

    async def run() -> None:
        engine = create_engine(
            settings.database_url, settings.database_schema, tls=settings.postgres_tls()
        )
        try:
            rev = await current_revision(engine, settings.database_schema)
            typer.echo(f"current={rev or 'none'} head={head_revision()}")
        finally:
            await engine.dispose()

    asyncio.run(run())


if __name__ == "__main__":
    cli()
