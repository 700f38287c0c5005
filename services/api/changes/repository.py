"""All SQL of the change stream. Reads only, in the caller's unit of work."""

from __future__ import annotations

import asyncpg


async def changes_after(
    conn: asyncpg.Connection, after_id: int, dimension: str | None, limit: int
) -> list[asyncpg.Record]:
    """History rows with id > `after_id` in id order (the primary key)."""
    return list(
        await conn.fetch(
            """
            SELECT id, change_id, customer_id, dimension, from_segment, to_segment, reason,
                   definition_version, caused_by_event_at, evaluated_at, sequence
            FROM segment_history
            WHERE id > $1 AND ($2::text IS NULL OR dimension = $2)
            ORDER BY id
            LIMIT $3
            """,
            after_id,
            dimension,
            limit,
        )
    )


async def last_change_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT COALESCE(max(id), 0) FROM segment_history"))
