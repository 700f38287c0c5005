"""After the rows are in: the run's customers queued for the segmenter with cause
`import`, the wait until it has evaluated them all, and the run's completion, with its
summary event under publish: summary (as a definitions backfill's, services/segmenter/
backfill.py). The segmenter evaluates; this only queues, watches and counts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.importer import repository as repo
from services.importer.progress import Progress
from shared.clock import Clock
from shared.db.engine import pg_connection
from shared.events.definitions_activated import Transition
from shared.events.import_completed import (
    IMPORT_EVENT_KEY,
    ImportCompleted,
    encode_import_completed,
    import_completed_id,
)


async def reload(engine: AsyncEngine, run: repo.Run) -> repo.Run:
    async with pg_connection(engine) as conn:
        return await repo.get_run(conn, run.run_id)


async def queue(engine: AsyncEngine, clock: Clock, run_id: str) -> int:
    """Queue the run's customers for the segmenter with cause `import`, in one
    transaction, synchronously committed (after every chunk of the run's rows)."""
    async with pg_connection(engine) as conn, conn.transaction():
        return await repo.queue_imported(conn, run_id, clock.now())


async def wait_segmented(
    engine: AsyncEngine,
    clock: Clock,
    run: repo.Run,
    progress: Progress,
    *,
    wait_seconds: float,
    poll_seconds: float,
    is_stopping: Callable[[], bool],
) -> bool:
    """Wait until the segmenter has evaluated every customer the run queued, then
    complete the run (with its summary event under publish: summary, in the same
    transaction). False if the wait ran out first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    async with pg_connection(engine) as conn:
        while True:
            pending = await repo.import_pending(conn, run.run_id)
            progress.segmenting(pending)
            if pending == 0:
                break
            if loop.time() >= deadline or is_stopping():
                return False
            await asyncio.sleep(poll_seconds)
        async with conn.transaction():
            summary = None
            if run.publish == "summary":
                summary = await _summary(conn, clock, run)
            await repo.complete_run(conn, run.run_id, summary)
    return True


async def _summary(conn: Any, clock: Clock, run: repo.Run) -> tuple[str, uuid.UUID, bytes]:
    """The summary event's outbox row: its key, id and payload."""
    rows = await repo.transition_counts(conn, run.run_id)
    transitions = [
        Transition(
            dimension=r["dimension"],
            from_segment=r["from_segment"],
            to_segment=r["to_segment"],
            customers=r["n"],
        )
        for r in rows
    ]
    current = await repo.get_run(conn, run.run_id)
    data = ImportCompleted(
        import_id=run.run_id,
        customers=current.customers or 0,
        moved=sum(t.customers for t in transitions),
        transitions=transitions,
        until=run.until,
        started_at=current.started_at,
        completed_at=clock.now(),
    )
    return (
        IMPORT_EVENT_KEY,
        uuid.UUID(import_completed_id(run.run_id)),
        encode_import_completed(data),
    )
