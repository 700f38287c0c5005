"""The segmenter's side of the Redis segment cache: stale marks before commit, documents after,
and the repair of marks that Redis could not take.

Per batch (worker.py `_evaluate_batch`), in this order, so that once an evaluation has
committed the API never serves an older document (shared/segment_cache.py says how):
1. Before the transaction: `mark_stale` drops the batch's documents in one round trip.
2. In the transaction: the customers whose mark failed go into `cache_repairs`, so the
   batch still commits when Redis is away (Redis never stops the segmenter).
3. After commit: `write` puts the new documents, retried twice with a short jittered
   backoff (shared/retry.py: a refused connection or a time-out, not an error reply); one
   that still fails leaves a miss, never a stale document.
After a failure Redis is left alone for `retry_after_seconds` (marks count as failed, writes
are skipped): a dead or hanging Redis then costs a batch nothing but its repair rows.

`CacheRepairer` drains `cache_repairs` once Redis answers: it marks those customers stale at
their committed version, so a Redis that comes back holding older documents cannot serve
them, and deletes the rows in the same transaction. Rows are claimed with SKIP LOCKED, so any
number of processes can repair side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.metrics import SegmenterMetrics
from shared.db.engine import pg_connection
from shared.retry import Backoff, Retry, is_retriable, retrying
from shared.segment_cache import CACHE_ERRORS, CachedCustomer, SegmentCache

log = structlog.get_logger("segmenter.cache")

# Short: the evaluation loop waits for the write, and the mark already protects readers.
WRITE_ATTEMPTS = 3
WRITE_BACKOFF = Backoff(initial_seconds=0.05, maximum_seconds=0.2)
# Capped low: once Redis answers again, its stale documents are dropped within the cap.
REPAIR_BACKOFF = Backoff(initial_seconds=0.2, maximum_seconds=2.0)


class CacheWriter:
    """Marks and writes one evaluation loop's documents; any number of loops may share one."""

    def __init__(
        self, cache: SegmentCache, metrics: SegmenterMetrics, *, retry_after_seconds: float = 2.0
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._retry_after = retry_after_seconds
        self._skip_until = 0.0

    @property
    def is_skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    async def mark_stale(self, docs: list[CachedCustomer]) -> list[tuple[str, int]]:
        """Mark the documents' customers stale at their new versions; returns those that
        could not be marked, which the batch's transaction must queue for repair."""
        versions = [(doc.customer_id, doc.version) for doc in docs]
        if not versions:
            return []
        if not self.is_skipping:
            try:
                await self._cache.mark_stale(versions)
                return []
            except CACHE_ERRORS as exc:
                self._failed("cache_mark_failed", exc)
        self._metrics.cache_repairs.inc(len(versions))
        return versions

    async def write(self, docs: list[CachedCustomer]) -> None:
        """Write committed documents; a failure is counted and logged, never raised."""
        if not docs:
            return
        if self.is_skipping:
            self._metrics.cache_failures.inc()
            return
        try:
            await retrying(
                lambda: self._cache.put_many(docs),
                WRITE_BACKOFF,
                "cache_write",
                attempts=WRITE_ATTEMPTS,
            )
        except CACHE_ERRORS as exc:
            self._metrics.cache_failures.inc()
            self._failed("cache_write_failed", exc)

    def _failed(self, event: str, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + self._retry_after
        log.warning(event, error=f"{type(exc).__name__}: {exc}", skip_s=self._retry_after)


class CacheRepairer:
    """`run()` until stopped; `repair_once()` does one pass."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: SegmentCache,
        *,
        interval_seconds: float = 1.0,
        batch_size: int = 500,
    ) -> None:
        self._engine = engine
        self._cache = cache
        self._interval = interval_seconds
        self._batch_size = batch_size

    async def repair_once(self) -> int:
        """Invalidate up to `batch_size` queued customers' documents; returns how many.
        Raises what Redis raised, with the rows left for the next pass."""
        async with pg_connection(self._engine) as conn, conn.transaction():
            versions = await repo.claim_cache_repairs(conn, self._batch_size)
            if versions:
                # Under the rows' locks: an evaluation queueing one of them again waits for
                # this commit, then inserts its row afresh.
                await self._cache.mark_stale(versions)
                await repo.delete_cache_repairs(conn, [cid for cid, _ in versions])
        return len(versions)

    async def run(self, stopping: asyncio.Event) -> None:
        """Repair until stopped. Redis failing in any way, or PostgreSQL in a retriable one,
        is waited out with backoff; anything else ends the loop, and so the process."""
        retry = Retry(REPAIR_BACKOFF, "cache_repair", stopping)
        while not stopping.is_set():
            try:
                repaired = await self.repair_once()
            except Exception as exc:
                if not (isinstance(exc, CACHE_ERRORS) or is_retriable(exc)):
                    raise
                await retry.pause(exc)
                continue
            retry.succeeded()
            if repaired:
                log.info("cache_repaired", customers=repaired)
            if repaired < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._interval)
