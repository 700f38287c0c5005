"""All SQL of the statistics endpoints. Reads only, in the caller's unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg


async def transition_counts(
    conn: asyncpg.Connection,
    since: datetime,
    until: datetime,
    dimension: str | None,
    dimensions: Sequence[str] | None,
) -> list[asyncpg.Record]:
    """Moves per (dimension, from, to) evaluated in [since, until), of `dimensions` only when
    given; from is NULL on entry, to is NULL on exit (the dimension was removed)."""
    return list(
        await conn.fetch(
            """
            SELECT dimension, from_segment, to_segment, count(*) AS count
            FROM segment_history
            WHERE evaluated_at >= $1 AND evaluated_at < $2
              AND ($3::text IS NULL OR dimension = $3)
              AND ($4::text[] IS NULL OR dimension = ANY($4::text[]))
            GROUP BY 1, 2, 3
            ORDER BY dimension, count DESC, from_segment NULLS FIRST, to_segment
            """,
            since,
            until,
            dimension,
            None if dimensions is None else list(dimensions),
        )
    )
