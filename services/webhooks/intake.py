"""From the change topic into the delivery log.

The source is the change topic, not segment_history: the topic is what StreamSeg publishes
(a definitions backfill under `publish: none` or `summary` writes history but publishes
nothing, and a webhook must not flood a receiver the topic spares), every copy of a change
carries its stable id, and it is keyed by customer, so one customer's changes are in one
partition in commit order (the outbox publishes in commit order).

The guarantee, in the order the code keeps it (`_commit`):
1. the batch's deliveries are written in one transaction, each lane in topic order,
   duplicates of what the log already holds ignored (the topic read again after a crash,
   a change the outbox published twice: same subscription and event id);
2. only then are the batch's offsets committed to Kafka. A crash between 1 and 2 reads
   the batch again and writes nothing new: at least once into the log, never twice.
A batch for partitions this process no longer owns is dropped before it is written: the
revocation waits for the batch in hand, so two owners never write one lane at once.

A subscription receives the changes published (record timestamp) from its creation on.
Only segment changes are matched today; another event type on the topic is counted and
passed over (a `customer.erased` event would be matched here, by every subscription).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from services.webhooks import repository as repo
from services.webhooks.metrics import WebhooksMetrics
from services.webhooks.settings import WebhooksSettings
from shared.db.engine import pg_connection
from shared.events import EventRejected, decode_segment_change
from shared.kafka import locate
from shared.webhooks.filters import Filters

log = structlog.get_logger("webhooks.intake")

Record = ConsumerRecord[bytes, bytes]
SEGMENT_CHANGED = "io.streamseg.segment.changed.v1"


class _Typed(msgspec.Struct):
    type: str


_typed = msgspec.json.Decoder(_Typed)


def _event_type(raw: bytes) -> str | None:
    try:
        return _typed.decode(raw).type
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


class Intake:
    def __init__(
        self,
        settings: WebhooksSettings,
        engine: AsyncEngine,
        consumer: AIOKafkaConsumer,
        metrics: WebhooksMetrics,
        on_enqueued: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._consumer = consumer
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        self._batch_lock = asyncio.Lock()
        self._starts: dict[TopicPartition, int] = {}
        self.batches = 0

    @property
    def listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self._batch_lock)

    async def run(self, stopping: asyncio.Event) -> None:
        """Write batches into the log until `stopping`; database errors propagate (the
        supervisor restarts the process, which reads from the committed offsets)."""
        while not stopping.is_set():
            batch = await self._consumer.getmany(
                timeout_ms=200, max_records=self._settings.max_poll_records
            )
            if not batch:
                continue
            async with self._batch_lock:
                owned = self._consumer.assignment()
                batch = {tp: records for tp, records in batch.items() if tp in owned}
                if batch:
                    self._starts = {tp: records[0].offset for tp, records in batch.items()}
                    await self._commit(batch)
                    self._starts = {}

    async def rewind(self) -> None:
        """After a batch failed to be written: read it again from its first records."""
        async with self._batch_lock:
            owned = self._consumer.assignment()
            for tp, offset in self._starts.items():
                if tp in owned:
                    self._consumer.seek(tp, offset)
            self._starts = {}

    async def _commit(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        now = datetime.now(UTC)
        records = [r for records in batch.values() for r in records]
        async with pg_connection(self._engine) as conn, conn.transaction():
            deliveries = self._match(await repo.subscriptions(conn), records)
            pending, failed = await repo.enqueue(
                conn, deliveries, now, self._settings.schedule.deadline(now)
            )
        # After the log has the batch: a crash before this reads it again, harmlessly.
        try:
            await self._consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        except KafkaError as exc:
            # The log has the batch; the next commit covers it, or the partition's next
            # owner reads it again and finds nothing new.
            log.warning("offsets_not_committed", error=f"{type(exc).__name__}: {exc}")
        self.batches += 1
        if pending:
            self._metrics.enqueued.labels("pending").inc(pending)
            self._on_enqueued()
        if failed:
            self._metrics.enqueued.labels("failed").inc(failed)

    def _match(
        self,
        subscriptions: Sequence[repo.Subscription],
        records: Sequence[ConsumerRecord[bytes, bytes]],
    ) -> list[repo.NewDelivery]:
        out: list[repo.NewDelivery] = []
        if not subscriptions:
            return out
        filters = [
            (s, Filters(s.dimensions, s.audiences, s.segments, s.causes)) for s in subscriptions
        ]
        for record in records:
            value = record.value or b""
            try:
                event = decode_segment_change(value)
            except EventRejected as exc:
                if _event_type(value) not in (None, SEGMENT_CHANGED):
                    self._metrics.skipped.labels("type").inc()  # not a change: not sent
                    continue
                self._metrics.skipped.labels("undecodable").inc()
                log.warning(
                    "change_undecodable",
                    record=locate(record.topic, record.partition, record.offset),
                    error=str(exc),
                )
                continue
            change = event.data
            published = datetime.fromtimestamp(record.timestamp / 1000, UTC)
            for subscription, accepts in filters:
                if subscription.created_at > published or not accepts.accepts(
                    change.dimension, change.from_segment, change.to_segment, change.cause
                ):
                    continue
                out.append(
                    repo.NewDelivery(
                        subscription.id,
                        subscription.is_enabled,
                        event.id,
                        event.type,
                        change.customer_id,
                        record.partition,
                        record.offset,
                        change.evaluated_at,
                        value,
                    )
                )
        return out


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, batch_lock: asyncio.Lock) -> None:
        self._batch_lock = batch_lock

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch being written: its offsets are committed before the partitions
        # go, and a batch fetched before the revocation is dropped by the ownership check.
        async with self._batch_lock:
            log.info(
                "partitions_revoked", partitions=[f"{t.topic}[{t.partition}]" for t in revoked]
            )

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=_names(assigned))


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{t.topic}[{t.partition}]" for t in partitions]
