"""Alembic migrations, applied programmatically, and the start-up check against a stale schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import check_schema_name

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
UPGRADE_COMMAND = "python -m shared.db upgrade"


class SchemaBehindError(RuntimeError):
    """The database schema is older than this code expects."""


def _config(connection: Connection, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine, schema: str = "public") -> None:
    """Create `schema` if needed and apply every pending migration to it."""
    check_schema_name(schema)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(lambda sync: command.upgrade(_config(sync, schema), "head"))


async def current_revision(engine: AsyncEngine, schema: str = "public") -> str | None:
    """The revision applied to `schema`, or None for an empty schema."""
    check_schema_name(schema)

    def read(sync: Connection) -> str | None:
        ctx = MigrationContext.configure(sync, opts={"version_table_schema": schema})
        return ctx.get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def require_current(engine: AsyncEngine, schema: str = "public") -> None:
    """Raise SchemaBehindError, naming the command to run, unless `schema` is at head."""
    current = await current_revision(engine, schema)
    head = head_revision()
    if current != head:
        raise SchemaBehindError(
            f"database schema {schema!r} is at revision {current or 'none'}, this code needs "
            f"{head}; run `{UPGRADE_COMMAND}` (with the same STREAMSEG_* settings) and start again"
        )
