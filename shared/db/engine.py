"""Engine factory: every connection uses the configured schema and bounded timeouts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from shared.retry import is_retriable
from shared.security import PREFER, PostgresTls

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    """Return the schema name if it is a plain identifier; it is interpolated into DDL."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"database schema {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


def create_engine(
    url: str,
    schema: str = "public",
    *,
    pool_size: int = 5,
    statement_timeout_ms: int = 30_000,
    application_name: str = "streamseg",
    pre_ping: bool = True,
    tls: PostgresTls = PREFER,
) -> AsyncEngine:
    """Create an asyncpg engine whose sessions see `schema` first on the search path.

    `tls` is the connection's sslmode and root certificate (pass `settings.postgres_tls()`);
    the default is libpq's and asyncpg's, `prefer`. Migrations run on this engine's
    connections (shared/db/migrate.py), so they use the same.

    `pre_ping` checks each connection with a round trip as it leaves the pool; a caller
    that retries every connection error (ingest) turns it off, since the ping costs a round
    trip per unit of work and can wait without bound on a server that stopped answering.
    """
    check_schema_name(schema)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        connect_args={
            "server_settings": {
                "search_path": schema,
                "statement_timeout": str(statement_timeout_ms),
                "application_name": application_name,
            },
            "timeout": 10,
            "ssl": tls.connect_ssl(),
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """Sessions that never expire loaded rows on commit: the services read, then commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(sa_conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, for COPY and array-bound statements."""
    raw = await sa_conn.get_raw_connection()
    return raw.driver_connection


@asynccontextmanager
async def pg_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled asyncpg connection (see `driver_connection`); the caller opens its own
    transaction on it.

    An error that may have come from the connection itself (a retriable one: it dropped,
    the server restarted, it was closed for not answering) takes the connection out of the
    pool. SQLAlchemy does that only for the disconnects it recognises, and an asyncpg
    connection closed under it is not one: without this the pool hands the dead connection
    out again and again, which no retry gets past.
    """
    async with engine.connect() as sa_conn:
        try:
            yield await driver_connection(sa_conn)
        except BaseException as exc:
            if isinstance(exc, Exception) and is_retriable(exc):
                await sa_conn.invalidate(exc)
            raise
