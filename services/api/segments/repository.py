"""All SQL of the segment endpoints. Reads only, in the caller's unit of work."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


async def segment_sizes(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Customers currently in each (dimension, segment)."""
    rows = await conn.fetch(
        "SELECT dimension, segment, count(*) AS n FROM customer_segments GROUP BY 1, 2"
    )
    return {(r["dimension"], r["segment"]): r["n"] for r in rows}


async def members(
    conn: asyncpg.Connection, dimension: str, segment: str, after: str, limit: int
) -> list[asyncpg.Record]:
    """Members in customer_id order, strictly after `after`; walks the members index."""
    return list(
        await conn.fetch(
            """
            SELECT customer_id, since FROM customer_segments
            WHERE dimension = $1 AND segment = $2 AND customer_id > $3
            ORDER BY customer_id
            LIMIT $4
            """,
            dimension,
            segment,
            after,
            limit,
        )
    )


@dataclass(frozen=True, slots=True)
class StoredPopulation:
    computed_at: datetime
    customers: int
    stats: dict[str, Any]  # PopulationStats.to_dict()


async def newest_population(
    conn: asyncpg.Connection, definition_version: int
) -> StoredPopulation | None:
    """The newest population stats computed for this definitions version, if any."""
    row = await conn.fetchrow(
        """
        SELECT computed_at, customers, stats FROM population_stats
        WHERE definition_version = $1 ORDER BY id DESC LIMIT 1
        """,
        definition_version,
    )
    if row is None:
        return None
    # SQLAlchemy's asyncpg dialect decodes jsonb on its connections; a bare one returns text.
    stats = row["stats"]
    decoded = orjson.loads(stats) if isinstance(stats, str | bytes) else stats
    return StoredPopulation(row["computed_at"], row["customers"], decoded)
