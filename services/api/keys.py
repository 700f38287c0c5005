"""`python -m services.api.keys create|revoke|list`: manage API keys from a shell.

Needs only PostgreSQL (the STREAMSEG_DATABASE_* settings). A created key is printed once;
only its SHA-256 is stored. Every change is written to the audit log with the OS user.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import asyncpg
import typer

from services.api.auth import repository
from services.api.auth.keys import SCOPES, hash_key, new_key
from services.api.auth.repository import AuditEntry
from shared.db.engine import create_engine, driver_connection
from shared.settings import DatabaseSettings

cli = typer.Typer(add_completion=False, help="StreamSeg API keys")
T = TypeVar("T")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _in_transaction(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    settings = DatabaseSettings()

    async def run() -> T:
        engine = create_engine(
            settings.database_url, settings.database_schema, tls=settings.postgres_tls()
        )
        try:
            async with engine.connect() as sa_conn:
                conn = await driver_connection(sa_conn)
                # asyncpg's transaction: SQLAlchemy's begin() would not reach the driver.
                async with conn.transaction():
                    return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@cli.command("create")
def create_cmd(
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    scope: Annotated[list[str], typer.Option(help=f"Repeat for several: {', '.join(SCOPES)}")],
) -> None:
    """Create a key and print it; it cannot be shown again."""
    unknown = sorted(set(scope) - set(SCOPES))
    if unknown:
        raise typer.BadParameter(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
    if not name.strip() or not name.isprintable():
        raise typer.BadParameter("--name must be printable text")
    key_id, key = new_key()
    scopes = sorted(set(scope))

    async def work(conn: asyncpg.Connection) -> None:
        await repository.insert_key(conn, key_id, name, hash_key(key), scopes)
        detail = {"created_key_id": key_id, "name": name, "scopes": scopes}
        entry = AuditEntry(datetime.now(UTC), _actor(), None, "key.create", detail=detail)
        await repository.insert_audit(conn, [entry])

    _in_transaction(work)
    typer.echo(f"id:     {key_id}\nscopes: {' '.join(scopes)}\nkey:    {key}")
    typer.echo("Store the key now: it is not stored and cannot be shown again.", err=True)


@cli.command("revoke")
def revoke_cmd(key_id: Annotated[str, typer.Argument(help="The key's id (see `list`)")]) -> None:
    """Revoke a key; API processes refuse it within STREAMSEG_API_AUTH_CACHE_SECONDS."""

    async def work(conn: asyncpg.Connection) -> bool:
        now = datetime.now(UTC)
        row = await repository.revoke_key(conn, key_id, now)
        if row is None:
            return False
        entry = AuditEntry(now, _actor(), None, "key.revoke", detail={"revoked": key_id})
        await repository.insert_audit(conn, [entry])
        return True

    if not _in_transaction(work):
        typer.echo(f"no API key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@cli.command("list")
def list_cmd() -> None:
    """Every key with its scopes and state; never the keys themselves."""
    rows = _in_transaction(repository.list_keys)
    for r in rows:
        state = f"revoked {r.revoked_at.isoformat()}" if r.revoked_at else "active"
        typer.echo(
            f"{r.id}  {','.join(r.scopes):<22} {state:<40} "
            f"created {r.created_at.isoformat()}  {r.name}"
        )


if __name__ == "__main__":
    cli()
