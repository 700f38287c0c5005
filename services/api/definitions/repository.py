"""SQL of the definitions endpoints beyond shared/definitions/repository.py: reads only, in
the caller's unit of work."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.definitions.repository import Backfill


async def backfills_of(conn: asyncpg.Connection, versions: Sequence[int]) -> dict[int, Backfill]:
    """The backfills of a page of versions, in one query."""
    if not versions:
        return {}
    rows = await conn.fetch(
        "SELECT * FROM definition_backfills WHERE version = ANY($1::int[])", list(versions)
    )
    return {row["version"]: Backfill(**dict(row)) for row in rows}
