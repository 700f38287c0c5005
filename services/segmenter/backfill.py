"""The re-evaluation a definitions activation starts, fed at a bounded rate behind live work.

One process at a time feeds (an advisory lock per step). It queues the population in
customer-id order, `chunk` customers at a time, only while fewer than `chunk` of its
re-evaluations are still queued and the live backlog's oldest row has waited less than
`live_lag_seconds`; the queue leases live rows first (queue.lease_due). Its cursor commits
with each chunk, so a feeder that dies resumes where it stopped. When everything is fed and
evaluated, the backfill completes, and under `publish: summary` its summary event goes to
the outbox in the same transaction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.ruleset import Ruleset
from shared.clock import Clock
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.events.definitions_activated import (
    DEFINITIONS_EVENT_KEY,
    DefinitionsActivated,
    Transition,
    definitions_activated_id,
    encode_definitions_activated,
)
from shared.retry import Backoff, Retry, repeat_until_stopped

log = structlog.get_logger("segmenter.backfill")
IDLE_RECHECK = 5.0  # seconds between two looks for a backfill under an unchanged version


class BackfillFeeder:
    def __init__(
        self,
        engine: AsyncEngine,
        ruleset: Ruleset,
        clock: Clock,
        metrics: SegmenterMetrics,
        *,
        rate_per_second: float,
        interval_seconds: float = 0.5,
        live_lag_seconds: float = 1.0,
        on_published: Any = None,
    ) -> None:
        self._engine = engine
        self._ruleset = ruleset
        self._clock = clock
        self._metrics = metrics
        self.interval_seconds = interval_seconds
        self.chunk = max(1, round(rate_per_second * interval_seconds))
        self._live_lag_seconds = live_lag_seconds
        self._on_published = on_published
        # The version under which no backfill was running, and when that was seen.
        self._idle: tuple[int | None, float] | None = None

    async def step(self) -> str:
        """One feeding step; returns what it did (for logs and tests)."""
        if self._idle is not None:
            # A backfill starts with the activation of a new version, which this process
            # follows: until it switches, a step would find none, at four round trips.
            # (Looked at again now and then all the same.)
            version, since = self._idle
            if version == self._ruleset.version and time.monotonic() - since < IDLE_RECHECK:
                return "idle"
            self._idle = None
        async with pg_connection(self._engine) as conn, conn.transaction():
            if not await repo.try_lock(conn, "backfill"):
                return "locked"
            backfill = await store.running_backfill(conn)
            if backfill is None:
                self._idle = (self._ruleset.version, time.monotonic())
                return "idle"
            if backfill.version != self._ruleset.version or self._ruleset.is_awaiting_population:
                # This process has not switched yet, or has no stats to evaluate with.
                return "waiting"
            now = self._clock.now()
            pending = await store.backfill_pending(conn)
            if backfill.fed_at is None:
                backlog = await repo.backlog(conn, now)
                if pending >= self.chunk or backlog.oldest_due_seconds > self._live_lag_seconds:
                    return "throttled"
                walked = await store.feed_backfill(
                    conn, backfill.version, backfill.after_customer, self.chunk, now
                )
                self._metrics.backfill_fed.inc(walked)
                return "fed" if walked else "all_fed"
            if pending:
                return "evaluating"
            if not await store.complete_backfill(conn, backfill.version):
                return "idle"
            summary = await self._summarise(conn, backfill)
        log.info(
            "backfill_completed",
            version=backfill.version,
            customers=backfill.queued,
            moved=summary.moved if summary else None,
            summary_published=summary is not None,
        )
        if summary is not None and self._on_published is not None:
            self._on_published()
        return "completed"

    async def _summarise(self, conn: Any, backfill: store.Backfill) -> DefinitionsActivated | None:
        """Under publish: summary, the summary event into the outbox; else None."""
        version = await store.get_version(conn, backfill.version)
        if version is None or version.publish != "summary":
            return None
        rows = await store.transition_counts(conn, backfill.version)
        transitions = [
            Transition(
                dimension=r["dimension"],
                from_segment=r["from_segment"],
                to_segment=r["to_segment"],
                customers=r["n"],
            )
            for r in rows
        ]
        summary = DefinitionsActivated(
            version=version.version,
            replaces=version.replaces,
            changed_dimensions=list(version.changed_dimensions),
            customers=backfill.queued,
            moved=sum(t.customers for t in transitions),
            transitions=transitions,
            activated_at=version.activated_at,
            completed_at=datetime.now(UTC),
        )
        await conn.execute(
            "INSERT INTO segment_outbox (customer_id, change_id, payload) VALUES ($1, $2, $3)",
            DEFINITIONS_EVENT_KEY,
            uuid.UUID(definitions_activated_id(version.version)),
            encode_definitions_activated(summary),
        )
        return summary

    async def run(self, stopping: asyncio.Event) -> None:
        await repeat_until_stopped(
            self.step,
            self.interval_seconds,
            stopping,
            Retry(Backoff(0.2, 5.0), "backfill", stopping),
        )
