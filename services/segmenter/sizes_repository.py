"""The SQL of size history (migration 0011). Functions run in the caller's transaction and
never commit.

Every change of customer_segments appends signed counts to segment_size_deltas in its own
transaction: appends only, so concurrent batches share no row. The size job, one process at
a time, takes the deltas committed so far (DELETE ... RETURNING sees only committed rows;
one committed later waits for the next fold), adds them to segment_sizes, and copies the
totals into segment_size_snapshots at each step's cadence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


def deltas_of(changes: Iterable[tuple[str, str | None, str | None]]) -> Counter[tuple[str, str]]:
    """Signed counts per (dimension, segment) of (dimension, from, to) changes; zeros out."""
    deltas: Counter[tuple[str, str]] = Counter()
    for dimension, before, after in changes:
        if before is not None:
            deltas[dimension, before] -= 1
        if after is not None:
            deltas[dimension, after] += 1
    return Counter({k: n for k, n in deltas.items() if n})


async def add_deltas(
    conn: asyncpg.Connection, changes: Iterable[tuple[str, str | None, str | None]]
) -> None:
    """Append the size deltas of a batch's changes: one row per (dimension, segment) moved."""
    deltas = deltas_of(changes)
    if not deltas:
        return
    await conn.execute(
        """
        INSERT INTO segment_size_deltas (dimension, segment, customers)
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
        """,
        [d for d, _ in deltas],
        [s for _, s in deltas],
        list(deltas.values()),
    )


async def fold(conn: asyncpg.Connection) -> int:
    """Add the committed deltas to the totals and delete them; returns how many were folded."""
    return int(
        await conn.fetchval(
            """
            WITH taken AS (
                DELETE FROM segment_size_deltas RETURNING dimension, segment, customers
            ), summed AS (
                INSERT INTO segment_sizes AS t (dimension, segment, customers)
                SELECT dimension, segment, sum(customers) FROM taken GROUP BY 1, 2
                ON CONFLICT (dimension, segment)
                DO UPDATE SET customers = t.customers + EXCLUDED.customers
            )
            SELECT count(*) FROM taken
            """
        )
    )


@dataclass(frozen=True, slots=True)
class Recount:
    drift_customers: int  # the sum over segments of |counted - folded|
    segments: int  # how many (dimension, segment) totals were wrong


async def recount(conn: asyncpg.Connection, now: datetime) -> Recount:
    """Set the totals to a count of customer_segments, and record the drift corrected.

    One statement, so one snapshot: the deltas it deletes are exactly those committed in
    the changes it counts; one committed later is folded by the next fold on top of it."""
    row = await conn.fetchrow(
        """
        WITH taken AS (
            DELETE FROM segment_size_deltas RETURNING dimension, segment, customers
        ), folded AS (
            SELECT dimension, segment, sum(customers) AS customers FROM (
                SELECT dimension, segment, customers FROM segment_sizes
                UNION ALL SELECT dimension, segment, customers FROM taken
            ) u GROUP BY 1, 2
        ), counted AS (
            SELECT dimension, segment, count(*) AS customers FROM customer_segments
            GROUP BY 1, 2
        ), compared AS (
            SELECT dimension, segment, coalesce(c.customers, 0) AS counted,
                   coalesce(f.customers, 0) AS folded
            FROM counted c FULL JOIN folded f USING (dimension, segment)
        ), written AS (
            INSERT INTO segment_sizes AS t (dimension, segment, customers)
            SELECT dimension, segment, counted FROM compared
            ON CONFLICT (dimension, segment) DO UPDATE SET customers = EXCLUDED.customers
        ), recorded AS (
            INSERT INTO segment_size_recounts (recounted_at, drift_customers)
            SELECT $1, coalesce(sum(abs(counted - folded)), 0) FROM compared
        )
        SELECT coalesce(sum(abs(counted - folded)), 0) AS drift,
               count(*) FILTER (WHERE counted <> folded) AS wrong
        FROM compared
        """,
        now,
    )
    return Recount(int(row["drift"]), int(row["wrong"]))


async def last_recount_at(conn: asyncpg.Connection) -> datetime | None:
    at: datetime | None = await conn.fetchval(
        "SELECT recounted_at FROM segment_size_recounts ORDER BY id DESC LIMIT 1"
    )
    return at


async def snapshot(conn: asyncpg.Connection, step_seconds: int, at: datetime) -> int:
    """Copy the totals as the snapshot of `step_seconds` at `at`, unless taken already
    (the first fold in a step's interval takes it); returns how many rows were written.
    Empty segments are left out: a snapshot's absent segment had no customers."""
    status = await conn.execute(
        """
        INSERT INTO segment_size_snapshots (step_seconds, at, dimension, segment, customers)
        SELECT $1, $2, dimension, segment, customers FROM segment_sizes WHERE customers <> 0
        ON CONFLICT DO NOTHING
        """,
        step_seconds,
        at,
    )
    return int(status.split()[-1])


async def prune(conn: asyncpg.Connection, step_seconds: int, before: datetime) -> int:
    status = await conn.execute(
        "DELETE FROM segment_size_snapshots WHERE step_seconds = $1 AND at < $2",
        step_seconds,
        before,
    )
    return int(status.split()[-1])


async def totals(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    rows: Sequence[asyncpg.Record] = await conn.fetch(
        "SELECT dimension, segment, customers FROM segment_sizes"
    )
    return {(r["dimension"], r["segment"]): int(r["customers"]) for r in rows}
