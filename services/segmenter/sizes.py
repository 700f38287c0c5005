"""Size history: every segment's and audience's size at a fixed cadence, at no full scan.

The batch commit appends size deltas (sizes_repository.add_deltas); this job, in one process
at a time (an advisory lock per step), folds them into the running totals and snapshots the
totals once per interval of each step, then prunes what is past each step's retention. A
recount from customer_segments, every `recount_interval_seconds` (and at the first step
if none was ever made), corrects any drift and reports it as a metric.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter import sizes_repository as sizes
from services.segmenter.metrics import SegmenterMetrics
from shared.clock import Clock
from shared.db.engine import pg_connection
from shared.retry import Backoff, Retry, repeat_until_stopped

log = structlog.get_logger("segmenter.sizes")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Tier:
    step_seconds: int
    keep_seconds: float

    def bucket(self, now: datetime) -> datetime:
        """The start of the step's interval that holds `now`."""
        elapsed = int((now - _EPOCH).total_seconds())
        return _EPOCH + timedelta(seconds=elapsed - elapsed % self.step_seconds)


class SizeHistory:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        metrics: SegmenterMetrics,
        tiers: tuple[Tier, ...],
        *,
        fold_interval_seconds: float,
        recount_interval_seconds: float,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._metrics = metrics
        self._tiers = tiers
        self.fold_interval_seconds = fold_interval_seconds
        self._recount_interval = timedelta(seconds=recount_interval_seconds)

    async def step(self) -> str:
        """Fold (or recount), snapshot, prune; returns what it did (for logs and tests)."""
        now = self._clock.now()
        async with pg_connection(self._engine) as conn, conn.transaction():
            if not await repo.try_lock(conn, "sizes"):
                return "locked"
            last = await sizes.last_recount_at(conn)
            if last is None or now - last >= self._recount_interval:
                found = await sizes.recount(conn, now)
                self._metrics.size_drift.set(found.drift_customers)
                self._metrics.size_recounts.inc()
                log.info(
                    "sizes_recounted", drift_customers=found.drift_customers, wrong=found.segments
                )
                did = "recounted"
            else:
                folded = await sizes.fold(conn)
                self._metrics.size_deltas_folded.inc(folded)
                did = "folded"
            for tier in self._tiers:
                await sizes.snapshot(conn, tier.step_seconds, tier.bucket(now))
                await sizes.prune(
                    conn, tier.step_seconds, now - timedelta(seconds=tier.keep_seconds)
                )
        return did

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat_until_stopped(
            self.step,
            self.fold_interval_seconds,
            stopping,
            Retry(Backoff(0.2, 5.0), "sizes", stopping),
        )
