"""All SQL of the segment endpoints. Reads only, in the caller's unit of work."""

from __future__ import annotations

import asyncpg


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
