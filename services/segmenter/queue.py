"""Taking customers off the segmentation queue without holding its rows while evaluating.

Ingest upserts a customer's queue row in the same transaction as the customer's new facts.
A claim that deleted the row at the start of the evaluating transaction made every ingest
batch touching a claimed customer wait for that whole transaction (a busy customer is in
nearly every batch of both). So a claim is three short steps instead:

1. `lease_due`: a session advisory lock per due customer (several segmenters never evaluate
   one customer at once; ingest never waits on these locks);
2. `repository.load_leased`: the leased rows with their row version (`xmin`), read in the
   same snapshot as the customers' facts and state;
3. `settle`: last in the transaction that writes the evaluations, take each row off the
   queue (or leave it due at the customer's next wake-up) only if it is still the version
   that was read. A row that ingest changed meanwhile stays queued: its customer has facts
   newer than this evaluation saw, and is evaluated again.

A crash releases the leases with the connection and rolls the writes and deletes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.leases import customer_lease_key

_LEASE = f"pg_try_advisory_lock({customer_lease_key('customer_id')})"


@dataclass(frozen=True, slots=True)
class Due:
    """A leased customer's queue row as read: why it is queued, and the row's version."""

    customer_id: str
    due_at: datetime
    cause: str
    cause_event_at: datetime | None
    row_version: str


async def lease_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[str]:
    """Lease up to `limit` customers due by `now`, oldest first, for this session.

    Live rows (events, wake-ups, moved cut-offs) come before the re-evaluations a
    definitions activation queued, whatever their times: a backfill never delays a live
    event by more than the batch in flight. Rows leased by other segmenters are passed
    over; a window three times `limit` deep is looked at so that a second segmenter still
    finds work behind the first one's batch.
    """
    rows = await conn.fetch(
        f"""
        WITH live AS MATERIALIZED (
            SELECT customer_id, due_at FROM segmentation_queue
            WHERE due_at <= $1 AND cause <> 'definitions' ORDER BY due_at LIMIT $2 * 3
        ), backfill AS MATERIALIZED (
            SELECT customer_id, due_at FROM segmentation_queue
            WHERE due_at <= $1 AND cause = 'definitions' ORDER BY due_at LIMIT $2 * 3
        ), due AS MATERIALIZED (
            SELECT customer_id FROM (
                SELECT customer_id, 0 AS tier, due_at FROM live
                UNION ALL SELECT customer_id, 1, due_at FROM backfill
            ) d ORDER BY tier, due_at LIMIT $2 * 3
        )
        SELECT customer_id FROM due WHERE {_LEASE} LIMIT $2
        """,  # noqa: S608 - a constant
        now,
        limit,
    )
    return [r["customer_id"] for r in rows]


async def release_leases(conn: asyncpg.Connection) -> None:
    """Release every lease of this session (the evaluator's connection holds no other
    session locks)."""
    await conn.execute("SELECT pg_advisory_unlock_all()")


async def settle(
    conn: asyncpg.Connection,
    due: Sequence[Due],
    evaluated_at: datetime,
    wakeups: Mapping[str, datetime] | None = None,
) -> set[str]:
    """Take off the queue the rows that are still as read; returns their customers.

    A settled customer with a wake-up in `wakeups` keeps its row, now due then (cause
    "time"): one write instead of a delete and an insert. A row ingest changed meanwhile
    stays queued, due from `evaluated_at` on (what came before was evaluated), so the age of
    the oldest due row keeps meaning how far behind evaluation is; its customer schedules
    its wake-up when evaluated again. A row locked by an ingest transaction in flight is
    skipped, never waited for.

    The rows it touches stay locked until the transaction ends and ingest waits for them,
    so the evaluator runs this last, just before it commits.
    """
    if not due:
        return set()
    wake = wakeups or {}
    rows = await conn.fetch(
        """
        WITH locked AS (
            SELECT q.customer_id, q.xmin::text = read.row_version AS unchanged, read.wake_at
            FROM segmentation_queue q
            JOIN unnest($1::text[], $2::text[], $4::timestamptz[])
                 AS read(customer_id, row_version, wake_at)
              ON q.customer_id = read.customer_id
            ORDER BY q.customer_id
            FOR UPDATE OF q SKIP LOCKED
        ), moved AS (
            UPDATE segmentation_queue q SET due_at = GREATEST(q.due_at, $3)
            FROM locked WHERE q.customer_id = locked.customer_id AND NOT locked.unchanged
        ), woken AS (
            UPDATE segmentation_queue q
            SET due_at = locked.wake_at, cause = 'time', cause_event_at = NULL,
                enqueued_at = now()
            FROM locked
            WHERE q.customer_id = locked.customer_id AND locked.unchanged
              AND locked.wake_at IS NOT NULL
            RETURNING q.customer_id
        ), gone AS (
            DELETE FROM segmentation_queue q USING locked
            WHERE q.customer_id = locked.customer_id AND locked.unchanged
              AND locked.wake_at IS NULL
            RETURNING q.customer_id
        )
        SELECT customer_id FROM woken UNION ALL SELECT customer_id FROM gone
        """,
        [d.customer_id for d in due],
        [d.row_version for d in due],
        evaluated_at,
        [wake.get(d.customer_id) for d in due],
    )
    return {r["customer_id"] for r in rows}
