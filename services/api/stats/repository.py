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


async def size_steps(conn: asyncpg.Connection) -> dict[int, datetime]:
    """Each step that size snapshots are kept at, with its oldest snapshot: a loose index
    scan (one probe per step), since the snapshots table holds years of rows."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE steps AS (
            SELECT min(step_seconds) AS s FROM segment_size_snapshots
            UNION ALL
            SELECT (SELECT min(step_seconds) FROM segment_size_snapshots WHERE step_seconds > s)
            FROM steps WHERE s IS NOT NULL
        )
        SELECT s AS step_seconds,
               (SELECT min(at) FROM segment_size_snapshots WHERE step_seconds = s) AS oldest
        FROM steps WHERE s IS NOT NULL
        """
    )
    return {int(r["step_seconds"]): r["oldest"] for r in rows}


async def size_points(
    conn: asyncpg.Connection,
    source_step_seconds: int,
    step_seconds: int,
    since: datetime,
    until: datetime,
    dimension: str | None,
) -> list[asyncpg.Record]:
    """(at, dimension, segment, customers) of the snapshots kept at `source_step_seconds`
    in [since, until), one per `step_seconds` interval: the first in it, as of its start."""
    return list(
        await conn.fetch(
            """
            SELECT DISTINCT ON (bucket, dimension, segment)
                   to_timestamp(floor(extract(epoch FROM at) / $2) * $2) AS bucket,
                   dimension, segment, customers
            FROM segment_size_snapshots
            WHERE step_seconds = $1 AND at >= $3 AND at < $4
              AND ($5::text IS NULL OR dimension = $5)
            ORDER BY bucket, dimension, segment, at
            """,
            source_step_seconds,
            step_seconds,
            since,
            until,
            dimension,
        )
    )
