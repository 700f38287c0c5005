"""The ingest worker: Kafka order and interaction events in, exact aggregates in PostgreSQL out.

Delivery guarantee (see `_commit_batch`): a batch's effects and the offsets that follow it
commit in one PostgreSQL transaction, so each event changes the aggregates exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as repo
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from shared.clock import Clock
from shared.events import EventRejected, RejectReason, check_occurred_at, decode_event
from shared.events.orders import OrderEventBase
from shared.kafka import dlq_headers, dlq_topic, locate

log = structlog.get_logger("ingest")

AMOUNT_QUANTUM = Decimal("0.0001")
RETRIABLE_PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def to_base(amount: Decimal, rate: Decimal) -> Decimal:
    """Convert to the base currency, rounded to 4 places half-even (as the checker does)."""
    return (amount * rate).quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(slots=True)
class DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    reason: str
    detail: str


@dataclass(slots=True)
class PreparedBatch:
    """What a batch of records means for the database, before any I/O."""

    advances: dict[TopicPartition, int] = field(default_factory=dict)
    events: list[tuple[Any, ConsumerRecord[bytes, bytes]]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._worker.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._worker.claim(assigned)


class IngestWorker:
    """Consumes, validates, dead-letters and applies batches until `stop()`."""

    def __init__(
        self,
        settings: IngestSettings,
        engine: AsyncEngine,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        clock: Clock,
        metrics: IngestMetrics,
        owner: str,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
        self._metrics = metrics
        self._owner = owner
        self._owned: dict[TopicPartition, repo.Ownership] = {}
        self._next: dict[TopicPartition, int] = {}
        # Held while a batch is processed; a revocation waits for it, so a partition is
        # handed over only between batches (fencing covers the case where we are too slow).
        self._batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._last_progress = time.monotonic()
        self._last_prune = 0.0
        self.batches_committed = 0

    @property
    def listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    def stop(self) -> None:
        """Finish the batch in flight, then return from `run()`. Safe to call twice."""
        self._stopping.set()

    # ------------------------------------------------------------------ ownership
    async def claim(self, assigned: Sequence[TopicPartition]) -> None:
        if not assigned:
            return
        async with self._batch_lock, self._engine.connect() as sa_conn:
            conn = await _driver(sa_conn)
            async with conn.transaction():
                owned = await repo.claim_partitions(
                    conn, sorted((tp.topic, tp.partition) for tp in assigned), self._owner
                )
        for o in owned:
            tp = TopicPartition(o.topic, o.partition)
            self._owned[tp] = o
            self._next[tp] = o.next_offset
            self._consumer.seek(tp, o.next_offset)
            log.info(
                "partition_claimed",
                partition=locate(o.topic, o.partition, o.next_offset),
                epoch=o.epoch,
            )

    async def release(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            for tp in revoked:
                self._owned.pop(tp, None)
                self._next.pop(tp, None)
                log.info("partition_released", topic=tp.topic, partition=tp.partition)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """Process batches until stopped; unexpected errors propagate to the supervisor."""
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(
                timeout_ms=self._settings.poll_timeout_ms,
                max_records=self._settings.max_batch_records,
            )
            async with self._batch_lock:
                if batch:
                    await self._process(batch)
                self._update_lag()
            await self._maybe_prune()

    async def _process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        started = time.perf_counter()
        prepared = self._prepare(batch)
        if not prepared.advances:
            return
        attempt = 0
        while True:
            try:
                applied, duplicates = await self._commit_batch(prepared)
                break
            except repo.FencedError as exc:
                self._metrics.fenced.inc()
                log.warning("batch_fenced", error=str(exc))
                for tp in prepared.advances:
                    self._owned.pop(tp, None)
                return
            except RETRIABLE_PG_ERRORS as exc:
                attempt += 1
                if attempt > 8 or (self._stopping.is_set() and attempt > 2):
                    raise
                delay = min(5.0, 0.05 * 2**attempt) * (0.5 + random.random())
                log.warning(
                    "batch_retry",
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(delay)
        for tp, next_offset in prepared.advances.items():
            self._next[tp] = next_offset
        self._last_progress = time.monotonic()
        self.batches_committed += 1
        self._metrics.observe_batch(applied, duplicates, time.perf_counter() - started)
        # Kafka's own committed offsets are informational only (lag in standard tools); the
        # truth is in PostgreSQL, so a failure here loses nothing.
        with contextlib.suppress(Exception):
            await self._consumer.commit({tp: n for tp, n in prepared.advances.items()})

    def _prepare(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> PreparedBatch:
        now = self._clock.now()
        out = PreparedBatch()
        for tp, records in batch.items():
            expected = self._next.get(tp)
            if expected is None or tp not in self._owned:
                continue  # fetched before a revocation; the new owner will read it
            last = None
            for rec in records:
                if rec.offset < expected:
                    continue  # fetched before our seek to the stored offset
                last = rec.offset
                try:
                    out.events.append((self._screen(rec.value or b"", now), rec))
                except EventRejected as exc:
                    out.dead_letters.append(DeadLetter(rec, str(exc.reason), str(exc)))
            if last is not None:
                out.advances[tp] = last + 1
        return out

    def _screen(self, raw: bytes, now: datetime) -> Any:
        """Decode and check one record; raise EventRejected for anything to dead-letter."""
        event = decode_event(raw)
        rates = self._settings.currency_rates
        if isinstance(event, OrderEventBase) and event.currency not in rates:
            raise EventRejected(
                RejectReason.UNKNOWN_CURRENCY,
                "$.currency",
                f"{event.currency!r} has no configured rate",
            )
        check_occurred_at(event.occurred_at, now=now)
        return event

    async def _commit_batch(self, prepared: PreparedBatch) -> tuple[int, int]:
        """Apply one batch. The order is what makes it exactly-once:

        1. dead letters are written to Kafka and acknowledged first, so an offset is never
           committed past a bad record that is not yet safe on its dead-letter topic (a crash
           in between re-sends it: dead letters are at-least-once, located by their headers);
        2. in ONE PostgreSQL transaction: the offsets (fenced by our epoch, first, so the row
           locks are taken early), the dedup ledger, the aggregates and the segmentation
           queue. Either all of it is there after a crash, or none of it and the batch is
           read again from the stored offsets.
        """
        if prepared.dead_letters:
            await self._send_dead_letters(prepared.dead_letters)
        now = self._clock.now()
        async with self._engine.connect() as sa_conn:
            conn = await _driver(sa_conn)
            async with conn.transaction():
                await repo.advance_offsets(
                    conn,
                    sorted(
                        ((self._owned[tp], n) for tp, n in prepared.advances.items()),
                        key=lambda a: (a[0].topic, a[0].partition),
                    ),
                )
                events = _first_of_each_id(prepared.events)
                fresh = await repo.keep_new_events(conn, sorted(events), now)
                applied = [events[eid] for eid in sorted(fresh)]
                if applied:
                    await self._apply(conn, applied, now)
        return len(applied), len(prepared.events) - len(applied)

    async def _apply(self, conn: asyncpg.Connection, events: list[Any], now: datetime) -> None:
        rates = self._settings.currency_rates
        retention_start = now - timedelta(days=self._settings.interaction_retention_days)
        orders: dict[tuple[str, str], repo.OrderChange] = {}
        totals: dict[tuple[str, str], repo.InteractionChange] = {}
        window_rows: list[tuple[str, datetime, str]] = []
        cause: dict[str, datetime] = {}
        for ev in events:
            cid = ev.customer_id
            if cause.get(cid) is None or ev.occurred_at > cause[cid]:
                cause[cid] = ev.occurred_at
            if isinstance(ev, OrderEventBase):
                key = (cid, ev.order_id)
                change = orders.get(key) or repo.OrderChange(cid, ev.order_id)
                orders[key] = change
                amount = to_base(ev.amount, rates[ev.currency])
                if ev.type == "order_placed":
                    # The earliest placement wins, as it does in the database.
                    if change.placed_at is None or ev.occurred_at < change.placed_at:
                        change.placed_at, change.amount = ev.occurred_at, amount
                        change.channel = ev.channel
                elif ev.type == "order_refunded":
                    change.refunded += amount
                elif change.cancelled_at is None or ev.occurred_at < change.cancelled_at:
                    change.cancelled_at = ev.occurred_at
            else:
                tkey = (cid, ev.type)
                total = totals.get(tkey)
                if total is None:
                    totals[tkey] = repo.InteractionChange(cid, ev.type, 1, ev.occurred_at)
                else:
                    total.count += 1
                    total.last_at = max(total.last_at, ev.occurred_at)
                if ev.occurred_at > retention_start:
                    window_rows.append((cid, ev.occurred_at, ev.type))
        # Keys are sorted so that concurrent workers lock rows in the same order.
        await repo.apply_orders(conn, [orders[k] for k in sorted(orders)])
        await repo.insert_interactions(conn, window_rows)
        await repo.apply_interaction_totals(conn, [totals[k] for k in sorted(totals)])
        customers = sorted(cause)
        await repo.refresh_aggregates(conn, customers)
        await repo.mark_for_segmentation(conn, customers, now, [cause[c] for c in customers])

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        futures = []
        for letter in letters:
            rec = letter.record
            self._metrics.dead_lettered.labels(rec.topic, letter.reason).inc()
            log.warning(
                "dead_lettered",
                record=locate(rec.topic, rec.partition, rec.offset),
                reason=letter.reason,
                detail=letter.detail,
            )
            futures.append(
                await self._producer.send(
                    dlq_topic(rec.topic),
                    value=rec.value,
                    key=rec.key,
                    headers=[
                        *(rec.headers or ()),
                        *dlq_headers(
                            letter.reason, letter.detail, rec.topic, rec.partition, rec.offset
                        ),
                    ],
                )
            )
        await asyncio.gather(*futures)

    # ------------------------------------------------------------------ housekeeping
    def _update_lag(self) -> None:
        for tp in list(self._owned):
            high = self._consumer.highwater(tp)
            if high is not None and tp in self._next:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - self._next[tp])
                )

    def total_lag(self) -> int:
        """Records known to be waiting on the partitions this worker owns."""
        lag = 0
        for tp in list(self._owned):
            high = self._consumer.highwater(tp)
            if high is not None and tp in self._next:
                lag += max(0, high - self._next[tp])
        return lag

    def is_stalled(self) -> bool:
        """True when records are waiting and no batch has committed for `stall_seconds`."""
        if self.total_lag() == 0:
            self._last_progress = time.monotonic()
            return False
        return time.monotonic() - self._last_progress > self._settings.stall_seconds

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < self._settings.prune_interval_seconds:
            return
        self._last_prune = time.monotonic()
        now = self._clock.now()
        async with self._engine.connect() as sa_conn:
            conn = await _driver(sa_conn)
            async with conn.transaction():
                dedup, inter = await repo.prune(
                    conn,
                    now - timedelta(days=self._settings.dedup_window_days),
                    now - timedelta(days=self._settings.interaction_retention_days),
                )
        if dedup or inter:
            log.info("pruned", event_ids=dedup, interaction_rows=inter)


def _first_of_each_id(events: list[tuple[Any, ConsumerRecord[bytes, bytes]]]) -> dict[str, Any]:
    """A duplicate inside one batch is a duplicate too: keep the first delivery of each id."""
    out: dict[str, Any] = {}
    for ev, _ in events:
        out.setdefault(ev.event_id, ev)
    return out


async def _driver(sa_conn: Any) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy one, for COPY and array-bound statements."""
    raw = await sa_conn.get_raw_connection()
    return raw.driver_connection
