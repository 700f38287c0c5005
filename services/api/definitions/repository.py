"""SQL of the definitions endpoints beyond shared/definitions/repository.py: reads only, in
the caller's unit of work."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.definitions.activation import RetentionRows
from shared.definitions.repository import Backfill


async def backfills_of(conn: asyncpg.Connection, versions: Sequence[int]) -> dict[int, Backfill]:
    """The backfills of a page of versions, in one query."""
    if not versions:
        return {}
    rows = await conn.fetch(
        "SELECT * FROM definition_backfills WHERE version = ANY($1::int[])", list(versions)
    )
    return {row["version"]: Backfill(**dict(row)) for row in rows}


async def ingest_retention(conn: asyncpg.Connection) -> RetentionRows:
    """How long ingest keeps each source's rows, and the setting that says so, as ingest
    records it (`ingest_retention`); nothing before ingest first started."""
    rows = await conn.fetch(
        "SELECT source, retention, setting FROM ingest_retention ORDER BY source"
    )
    return tuple((row["source"], row["retention"], row["setting"]) for row in rows)
