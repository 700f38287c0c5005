"""All SQL of member exports: one chunk of a segment's members per statement, in the
caller's unit of work."""

from __future__ import annotations

import asyncpg


async def member_chunk(
    conn: asyncpg.Connection, dimension: str, segment: str, after: str, limit: int
) -> list[asyncpg.Record]:
    """(customer_id, since, reason) of up to `limit` members in customer_id order, strictly
    after `after`; walks the members index. `since` is ISO 8601 text in UTC with
    microseconds, whatever the session's time zone and date style."""
    return list(
        await conn.fetch(
            """
            SELECT customer_id,
                   to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS since,
                   reason
            FROM customer_segments
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
