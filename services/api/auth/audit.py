"""The audit log writer: entries are buffered and inserted in batches off the request path.

A read of a customer's data costs an append to a list; a background task inserts the buffer
every `flush_interval_seconds` in one statement. The trade-off, stated: entries of the last
interval are lost if the process is killed with SIGKILL (a graceful stop flushes them), and
if PostgreSQL stays down long enough for the buffer to exceed `buffer_max`, the oldest
entries are dropped and counted in `streamseg_api_audit_dropped_total`. Admin actions do not
go through here: they are written in the same transaction as the change they record.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.api.auth import repository
from services.api.auth.repository import AuditEntry
from services.api.database import Database
from services.api.metrics import AUDIT_DROPPED, AUDIT_WRITTEN

log = structlog.get_logger("api")


class AuditWriter:
    """`record()` is synchronous and cheap; `start()` and `stop()` come in a pair."""

    def __init__(self, db: Database, flush_interval_seconds: float, buffer_max: int) -> None:
        self._db = db
        self._interval = flush_interval_seconds
        self._buffer_max = buffer_max
        self._buffer: list[AuditEntry] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, entry: AuditEntry) -> None:
        self._buffer.append(entry)
        self._trim()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="audit-flush")

    async def stop(self) -> None:
        """Stop the loop and write what is buffered; safe to call twice or before start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    async def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            async with self._db.transaction() as conn:
                await repository.insert_audit(conn, batch)
        except Exception as exc:  # keep the entries for the next try, whatever went wrong
            self._buffer[:0] = batch
            self._trim()
            log.warning("audit_flush_failed", entries=len(batch), error=repr(exc))
            return
        AUDIT_WRITTEN.inc(len(batch))

    def _trim(self) -> None:
        if len(self._buffer) > self._buffer_max:
            excess = len(self._buffer) - self._buffer_max
            del self._buffer[:excess]
            AUDIT_DROPPED.inc(excess)
            log.error("audit_entries_dropped", count=excess)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
