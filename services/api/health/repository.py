"""SQL of the readiness report. Reads only, in the caller's unit of work."""

from __future__ import annotations

import asyncpg

# Counting stops here: past it the answer is "a lot", and the count stays cheap.
COUNT_CAP = 1_000_000


async def segmenter_backlog(conn: asyncpg.Connection) -> tuple[int, float | None]:
    """(due rows, up to COUNT_CAP; seconds since the oldest due row was due, or None).

    Live rows only: a definitions backfill's re-evaluations wait behind them on purpose,
    and its progress is reported by /v1/definitions."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM (SELECT 1 FROM segmentation_queue
                                      WHERE due_at <= now() AND cause <> 'definitions'
                                      LIMIT $1) d) AS due_rows,
               EXTRACT(EPOCH FROM now() - (SELECT min(due_at) FROM segmentation_queue
                                           WHERE due_at <= now()
                                             AND cause <> 'definitions'))::float8
                   AS oldest_seconds
        """,
        COUNT_CAP,
    )
    return int(row["due_rows"]), row["oldest_seconds"]


async def seconds_since_ingest(conn: asyncpg.Connection) -> float | None:
    """Seconds since an ingest worker last committed a batch (None: never)."""
    value = await conn.fetchval(
        "SELECT EXTRACT(EPOCH FROM now() - max(updated_at))::float8 FROM ingest_offsets"
    )
    return None if value is None else float(value)
