"""All SQL of the change stream. Reads only, in the caller's unit of work."""

from __future__ import annotations

import asyncpg


async def changes_for_key(
    conn: asyncpg.Connection, key_id: str, after_id: int, dimension: str | None, limit: int
) -> tuple[bool, list[asyncpg.Record]]:
    """Whether the API key `key_id` is still valid and, if it is, the history rows with
    id > `after_id` in id order (the primary key).

    One statement, so one snapshot: a change that committed after the key was revoked is
    never returned, and checking the key costs the stream no round trip of its own.
    """
    rows = await conn.fetch(
        """
        SELECT key.is_valid, h.*
        FROM (
            SELECT EXISTS (
                SELECT 1 FROM api_keys WHERE id = $4 AND revoked_at IS NULL
            ) AS is_valid
        ) key
        LEFT JOIN LATERAL (
            SELECT id, change_id, customer_id, dimension, from_segment, to_segment, reason,
                   cause, definition_version, caused_by_event_at, evaluated_at, sequence
            FROM segment_history
            WHERE key.is_valid AND id > $1 AND ($2::text IS NULL OR dimension = $2)
            ORDER BY id
            LIMIT $3
        ) h ON true
        """,
        after_id,
        dimension,
        limit,
        key_id,
    )
    if not rows[0]["is_valid"]:
        return False, []
    return True, [r for r in rows if r["id"] is not None]


async def last_change_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT COALESCE(max(id), 0) FROM segment_history"))
