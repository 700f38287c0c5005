"""The importer's own SQL: runs, per-file checkpoints, imported customers, and queueing them
for the segmenter. The rows themselves go through ingest's repository. Nothing here commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest import repository as ingest
from shared.db.leases import customer_lease_key
from shared.definitions.repository import Publish


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    publish: Publish
    until: datetime
    reject_path: str
    reject_bytes: int
    started_at: datetime
    loaded_at: datetime | None
    queued_at: datetime | None
    completed_at: datetime | None
    customers: int | None


@dataclass(frozen=True, slots=True)
class FileProgress:
    file_key: str
    next_row: int
    rows_read: int
    imported: int
    duplicates: int
    rejected: int
    is_done: bool


class CheckpointMovedError(Exception):
    """The file's checkpoint is not where this importer's chunk starts: another importer
    is reading the same file. Nothing of the chunk was committed."""

    retriable = False


async def lock_run(conn: asyncpg.Connection, run_id: str) -> bool:
    """A session lock on the run: one importer per run at a time."""
    locked: bool = await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':import:' || $1))", run_id
    )
    return locked


async def unlock_run(conn: asyncpg.Connection, run_id: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock(hashtext(current_schema() || ':import:' || $1))", run_id
    )


async def start_run(
    conn: asyncpg.Connection, run_id: str, publish: Publish, until: datetime, reject_path: str
) -> Run:
    await conn.execute(
        """
        INSERT INTO import_runs (run_id, publish, until, reject_path) VALUES ($1, $2, $3, $4)
        ON CONFLICT (run_id) DO NOTHING
        """,
        run_id,
        publish,
        until,
        reject_path,
    )
    return await get_run(conn, run_id)


async def get_run(conn: asyncpg.Connection, run_id: str) -> Run:
    row = await conn.fetchrow("SELECT * FROM import_runs WHERE run_id = $1", run_id)
    return Run(
        run_id=row["run_id"],
        publish=row["publish"],
        until=row["until"],
        reject_path=row["reject_path"],
        reject_bytes=row["reject_bytes"],
        started_at=row["started_at"],
        loaded_at=row["loaded_at"],
        queued_at=row["queued_at"],
        completed_at=row["completed_at"],
        customers=row["customers"],
    )


async def file_progress(
    conn: asyncpg.Connection, file_key: str, run_id: str, path: str, kind: str
) -> FileProgress:
    """Where reading the file resumes; a file first seen starts at row 0. A file already
    read in another run is done here too: its rows are in."""
    await conn.execute(
        """
        INSERT INTO import_files (file_key, run_id, path, kind) VALUES ($1, $2, $3, $4)
        ON CONFLICT (file_key) DO NOTHING
        """,
        file_key,
        run_id,
        path,
        kind,
    )
    row = await conn.fetchrow("SELECT * FROM import_files WHERE file_key = $1", file_key)
    return FileProgress(
        file_key=file_key,
        next_row=row["next_row"],
        rows_read=row["rows_read"],
        imported=row["imported"],
        duplicates=row["duplicates"],
        rejected=row["rejected"],
        is_done=row["done_at"] is not None,
    )


async def advance_file(
    conn: asyncpg.Connection,
    file_key: str,
    run_id: str,
    start: int,
    end: int,
    counts: tuple[int, int, int, int],
    reject_bytes: int,
    *,
    is_last: bool,
) -> None:
    """Move the file's checkpoint from `start` to `end` with the chunk's counts (read,
    imported, duplicates, rejected), and the run's reject file length; first in the chunk's
    transaction, so the row lock is taken early. Raises CheckpointMovedError if the
    checkpoint is not at `start`."""
    read, imported, duplicates, rejected = counts
    moved = await conn.fetchval(
        """
        UPDATE import_files SET next_row = $3, rows_read = rows_read + $4,
            imported = imported + $5, duplicates = duplicates + $6, rejected = rejected + $7,
            done_at = CASE WHEN $8 THEN now() END
        WHERE file_key = $1 AND next_row = $2 AND done_at IS NULL
        RETURNING 1
        """,
        file_key,
        start,
        end,
        read,
        imported,
        duplicates,
        rejected,
        is_last,
    )
    if moved is None:
        raise CheckpointMovedError(f"the checkpoint of {file_key[:12]} is no longer at row {start}")
    await conn.execute(
        "UPDATE import_runs SET reject_bytes = $2 WHERE run_id = $1", run_id, reject_bytes
    )


async def record_customers(
    conn: asyncpg.Connection, run_id: str, customer_ids: Sequence[str]
) -> None:
    if customer_ids:
        await conn.execute(
            """
            INSERT INTO import_customers (run_id, customer_id)
            SELECT $1, unnest($2::text[]) ORDER BY 2 ON CONFLICT DO NOTHING
            """,
            run_id,
            list(customer_ids),
        )


async def run_totals(conn: asyncpg.Connection, run_id: str) -> asyncpg.Record:
    """Counts over the run's files, and its customers."""
    row: asyncpg.Record = await conn.fetchrow(
        """
        SELECT COALESCE(sum(rows_read), 0) AS rows_read, COALESCE(sum(imported), 0) AS imported,
               COALESCE(sum(duplicates), 0) AS duplicates, COALESCE(sum(rejected), 0) AS rejected,
               (SELECT count(*) FROM import_customers WHERE run_id = $1) AS customers
        FROM import_files WHERE run_id = $1
        """,
        run_id,
    )
    return row


async def queue_imported(conn: asyncpg.Connection, run_id: str, due_at: datetime) -> int:
    """Mark the run loaded and queue its customers for the segmenter with cause `import`,
    in one transaction; returns how many. A customer already queued is due by `due_at` at
    the latest and evaluated for the import.

    A customer some of whose orders went in without fact_changes and who has read-model
    state now gained it while the import ran, from rows without those orders: the state
    is dropped, so that the evaluation rebuilds it from the stored rows. Under the
    customer's lease (shared/db/leases.py), taken for all of them before any row is
    written, so no evaluation of theirs is between its read and its commit meanwhile."""
    stale = [
        r["customer_id"]
        for r in await conn.fetch(
            """
            SELECT ic.customer_id FROM import_customers ic
            JOIN customer_metrics m ON m.customer_id = ic.customer_id
            WHERE ic.run_id = $1 AND ic.facts_skipped ORDER BY 1
            """,
            run_id,
        )
    ]
    if stale:
        await conn.execute(
            f"SELECT pg_advisory_xact_lock({customer_lease_key('u.c')})"  # noqa: S608 - a constant
            " FROM unnest($1::text[]) AS u(c) ORDER BY u.c",
            stale,
        )
        await conn.execute(
            "DELETE FROM customer_metrics WHERE customer_id = ANY($1::text[])", stale
        )
    count: int = await conn.fetchval(
        """
        WITH queued AS (
            INSERT INTO segmentation_queue AS q (customer_id, due_at, cause)
            SELECT customer_id, $2, 'import' FROM import_customers WHERE run_id = $1
            ORDER BY customer_id
            ON CONFLICT (customer_id) DO UPDATE SET
                due_at = LEAST(q.due_at, EXCLUDED.due_at), cause = 'import', enqueued_at = now()
            RETURNING 1
        )
        SELECT count(*) FROM queued
        """,
        run_id,
        due_at,
    )
    await conn.execute(
        """
        UPDATE import_runs SET loaded_at = COALESCE(loaded_at, now()), queued_at = now(),
            customers = $2
        WHERE run_id = $1
        """,
        run_id,
        count,
    )
    return count


async def import_pending(conn: asyncpg.Connection, run_id: str) -> int:
    """The run's customers still queued for their import evaluation."""
    n: int = await conn.fetchval(
        """
        SELECT count(*) FROM segmentation_queue q
        JOIN import_customers c ON c.customer_id = q.customer_id AND c.run_id = $1
        WHERE q.cause = 'import'
        """,
        run_id,
    )
    return n


async def transition_counts(conn: asyncpg.Connection, run_id: str) -> list[asyncpg.Record]:
    """The import's changes: (dimension, from_segment, to_segment, n)."""
    return list(
        await conn.fetch(
            """
            SELECT h.dimension, h.from_segment, h.to_segment, count(*) AS n
            FROM segment_history h
            JOIN import_customers c ON c.customer_id = h.customer_id AND c.run_id = $1
            WHERE h.cause = 'import'
              AND h.evaluated_at >= (SELECT queued_at FROM import_runs WHERE run_id = $1)
            GROUP BY 1, 2, 3 ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST
            """,
            run_id,
        )
    )


async def complete_run(
    conn: asyncpg.Connection,
    run_id: str,
    summary: tuple[str, uuid.UUID, bytes] | None,
) -> bool:
    """Mark the run complete; under publish: summary, its summary event (key, id,
    payload) goes to the outbox in the same transaction. False if it already was."""
    done = await conn.fetchval(
        "UPDATE import_runs SET completed_at = now() WHERE run_id = $1 AND completed_at IS NULL"
        " RETURNING 1",
        run_id,
    )
    if done is None:
        return False
    if summary is not None:
        await conn.execute(
            "INSERT INTO segment_outbox (customer_id, change_id, payload) VALUES ($1, $2, $3)",
            *summary,
        )
    return True


# Order chunks, set-based (services/importer/importer.py `_commit_orders`) --------------------
STAGED_EVENTS = "import_order_events"
STAGED_EVENT_COLUMNS = (
    "event_id",
    "customer_id",
    "order_id",
    "type",
    "occurred_at",
    "amount",
    "currency",
    "channel",
)


async def stage_order_events(conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]) -> None:
    """A chunk's order events (validated, amounts in base currency) into a session table,
    emptied at commit."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGED_EVENTS} (event_id text, customer_id text,"
        " order_id text, type text, occurred_at timestamptz, amount numeric, currency text,"
        " channel text) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(STAGED_EVENTS, records=records, columns=STAGED_EVENT_COLUMNS)


async def keep_new_staged_events(
    conn: asyncpg.Connection, seen_at: datetime, *, expect_new: bool
) -> int | None:
    """Record the staged events' ids in ingest's dedup ledger and drop the staged events
    seen before; returns how many are new, or None when all are (the cheap case, tried
    first in a savepoint while chunks come clean, as ingest's `keep_new_events` does)."""
    if expect_new:
        try:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO processed_events (event_id, seen_at)"  # noqa: S608 - a constant
                    f" SELECT event_id, $1 FROM {STAGED_EVENTS}",
                    seen_at,
                )
            return None
        except asyncpg.UniqueViolationError:
            pass
    new = await conn.fetch(
        f"INSERT INTO processed_events (event_id, seen_at)"  # noqa: S608 - a constant
        f" SELECT event_id, $1 FROM {STAGED_EVENTS} ON CONFLICT (event_id) DO NOTHING"
        " RETURNING event_id",
        seen_at,
    )
    await conn.execute(
        f"DELETE FROM {STAGED_EVENTS} WHERE NOT (event_id = ANY($1::text[]))",  # noqa: S608
        [r["event_id"] for r in new],
    )
    return len(new)


# The fold of `services/ingest/batch.py` `build_changes` for order events, set-based: per
# order, the earliest placement (ties: the smaller event id, compared as Python compares
# strings, hence COLLATE "C"), the sum of refunds, the earliest cancellation; per customer,
# the latest event time. Into ingest's session tables, for its own merge statements.
_FOLD_ORDERS = f"""
    WITH placed AS (
        SELECT DISTINCT ON (customer_id, order_id)
               customer_id, order_id, occurred_at, amount, channel, event_id, currency
        FROM {STAGED_EVENTS} WHERE type = 'order_placed'
        ORDER BY customer_id, order_id, occurred_at, event_id COLLATE "C"
    ), folded AS (
        SELECT customer_id, order_id,
               COALESCE(sum(amount) FILTER (WHERE type = 'order_refunded'), 0) AS refunded,
               min(occurred_at) FILTER (WHERE type = 'order_cancelled') AS cancelled_at
        FROM {STAGED_EVENTS} GROUP BY customer_id, order_id
    )
    INSERT INTO {{orders}} (c, o, p, a, ch, r, x, e, cu, i)
    SELECT f.customer_id, f.order_id, p.occurred_at, p.amount, p.channel, f.refunded,
           f.cancelled_at, p.event_id, p.currency, NULL
    FROM folded f LEFT JOIN placed p USING (customer_id, order_id)
"""  # noqa: S608 - constants only
_FOLD_TOUCHES = f"""
    INSERT INTO {{touches}} (customer_id, interaction_count, last_event_at, {{counts}}, has_orders)
    SELECT customer_id, 0, max(occurred_at), {{zeros}}, true
    FROM {STAGED_EVENTS} GROUP BY customer_id
"""  # noqa: S608 - constants only


async def fold_staged_orders(conn: asyncpg.Connection, run_id: str) -> None:
    """Fold the staged events into ingest's session tables, then record what ingest records
    for the read model (one fact_changes row per order changed) and the run's customers."""
    await ingest.create_staged_tables(conn)
    await conn.execute(_FOLD_ORDERS.format(orders=ingest.STAGED_ORDERS))
    counts = [f"{t}_count" for t in ingest.INTERACTION_TYPES]
    await conn.execute(
        _FOLD_TOUCHES.format(
            touches=ingest.STAGED_TOUCHES,
            counts=", ".join(counts),
            zeros=", ".join("0" for _ in counts),
        )
    )
    # What ingest records for the read model, only for customers the read model has state
    # for: one without state is initialised from its stored rows at its first read, which
    # ignores (and deletes) its fact_changes. One that gains state while the import runs
    # is marked here and rebuilt when queued (`queue_imported`).
    await conn.execute(
        f"INSERT INTO fact_changes (customer_id, order_id)"  # noqa: S608 - constants only
        f" SELECT c, o FROM {ingest.STAGED_ORDERS} s"
        " WHERE EXISTS (SELECT 1 FROM customer_metrics m WHERE m.customer_id = s.c)"
        " ORDER BY c, o"
    )
    await conn.execute(
        f"""
        INSERT INTO import_customers AS ic (run_id, customer_id, facts_skipped)
        SELECT $1, t.customer_id,
               NOT EXISTS (SELECT 1 FROM customer_metrics m WHERE m.customer_id = t.customer_id)
        FROM {ingest.STAGED_TOUCHES} t ORDER BY 2
        ON CONFLICT (run_id, customer_id) DO UPDATE
            SET facts_skipped = ic.facts_skipped OR EXCLUDED.facts_skipped
            WHERE EXCLUDED.facts_skipped AND NOT ic.facts_skipped
        """,  # noqa: S608 - constants only
        run_id,
    )
