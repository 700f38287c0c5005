"""The importer's own SQL: runs, per-file checkpoints, imported customers, and queueing them
for the segmenter. The rows themselves go through ingest's repository. Nothing here commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.definitions.repository import Publish


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    publish: Publish
    until: datetime
    reject_path: str
    reject_bytes: int
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
    the latest and evaluated for the import."""
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
