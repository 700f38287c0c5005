"""The ingest worker: Kafka order, interaction and customer events in, exact aggregates and
traits in PostgreSQL out.

Two stages run side by side: `_fetch_loop` fetches and prepares the next batch (decoding,
validation, folding into row changes) while `run` commits the previous one. The delivery
guarantee is in `_commit`: a batch's effects and the offsets after it commit in one
PostgreSQL transaction, so each event changes the aggregates exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as repo
from services.ingest.batch import (
    DeadLetter,
    Part,
    PreparedBatch,
    build_changes,
    prepare,
    without_poison,
)
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from shared.clock import Clock, EventTimeClock, present
from shared.db.engine import pg_connection
from shared.events.screening import Screen
from shared.kafka import (
    DEAD_LETTER_MAX_BYTES,
    HEADER_REFERENCE,
    dead_letter_reference,
    dlq_headers,
    dlq_topic,
    locate,
    record_size,
)
from shared.retry import Backoff, Retry, is_retriable

log = structlog.get_logger("ingest")

# Between tries of a batch or a claim; the first retries come quickly, since most errors
# are a moment's (a dropped connection), and PostgreSQL's crash recovery takes seconds.
RETRY_BACKOFF = Backoff(initial_seconds=0.05, maximum_seconds=5.0)
REPORT_INTERVAL_SECONDS = 1.0  # the least time between two copies of offsets to Kafka


class ClaimFailedError(RuntimeError):
    """Partitions were assigned to this worker but it could not claim them in PostgreSQL.

    aiokafka swallows what a rebalance listener raises, so the claim records the error and
    `run()` raises it: the process exits and its supervisor restarts it, rather than keeping
    partitions that nobody consumes."""


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
        *,
        dedup_window: timedelta = timedelta(days=7),
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
        self._metrics = metrics
        self._owner = owner
        self._screen = Screen(settings.currency_rates, settings.customers_topic)
        self._retention = timedelta(days=settings.interaction_retention_days)
        self._dedup_window = dedup_window
        # Per owned partition: our fencing epoch, the next offset committed to PostgreSQL,
        # and the next offset prepared (ahead of committed by at most one batch).
        self._epochs: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._fetched: dict[TopicPartition, int] = {}
        # Held while a batch commits; a revocation waits for it, so partitions change hands
        # between batches (and fencing covers a worker too slow to notice).
        self._commit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._last_progress = time.monotonic()
        self._last_prune = 0.0
        self._last_offset_check = time.monotonic()
        self._expect_new = True
        self._unreported: dict[TopicPartition, int] = {}
        self._reporting: asyncio.Task[None] | None = None
        # Assigned by Kafka, not yet claimed in PostgreSQL: counted in the lag, and a claim
        # that failed for good is raised by `run()`.
        self._unclaimed: set[TopicPartition] = set()
        self._fatal: BaseException | None = None
        self.batches_committed = 0

    @property
    def listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    def stop(self) -> None:
        """Finish the batch being committed, then return from `run()`. Safe to call twice."""
        self._stopping.set()

    # ------------------------------------------------------------------ ownership
    async def claim(self, assigned: Sequence[TopicPartition]) -> None:
        """Claim newly assigned partitions: retried while the error is retriable and the
        retry budget lasts; otherwise the error is kept for `run()` to raise."""
        if not assigned:
            return
        self._unclaimed.update(assigned)
        retry = Retry(RETRY_BACKOFF, "ingest-claim", self._stopping)
        started = time.monotonic()
        while True:
            try:
                await self._claim_once(assigned)
                return
            except Exception as exc:
                spent = time.monotonic() - started
                if (
                    not is_retriable(exc)
                    or spent > self._settings.retry_budget_seconds
                    or self._stopping.is_set()
                ):
                    log.error("claim_failed", error=f"{type(exc).__name__}: {exc}")
                    self._fatal = ClaimFailedError(
                        "could not claim "
                        + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned)
                        + f": {type(exc).__name__}: {exc}"
                    )
                    self._fatal.__cause__ = exc
                    return
                await retry.pause(exc)

    async def _claim_once(self, assigned: Sequence[TopicPartition]) -> None:
        async with (
            self._commit_lock,
            pg_connection(self._engine) as conn,
            conn.transaction(),
        ):
            owned = await repo.claim_partitions(
                conn, sorted((tp.topic, tp.partition) for tp in assigned), self._owner
            )
            if isinstance(self._clock, EventTimeClock):
                self._clock.advance_to(await repo.event_time_watermark(conn))
        for o in owned:
            tp = TopicPartition(o.topic, o.partition)
            self._epochs[tp] = o.epoch
            self._committed[tp] = self._fetched[tp] = o.next_offset
            self._consumer.seek(tp, o.next_offset)
            self._unclaimed.discard(tp)
            log.info(
                "partition_claimed",
                partition=locate(o.topic, o.partition, o.next_offset),
                epoch=o.epoch,
            )

    async def release(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._commit_lock:
            for tp in revoked:
                self._unclaimed.discard(tp)
                self._forget(tp)
                log.info("partition_released", topic=tp.topic, partition=tp.partition)

    def _forget(self, tp: TopicPartition) -> None:
        self._epochs.pop(tp, None)
        self._committed.pop(tp, None)
        self._fetched.pop(tp, None)
        self._unreported.pop(tp, None)

    # ------------------------------------------------------------------ the two stages
    async def run(self) -> None:
        """Commit prepared batches until stopped; unexpected errors propagate."""
        ready: asyncio.Queue[PreparedBatch] = asyncio.Queue(maxsize=1)
        fetcher = asyncio.create_task(self._fetch_loop(ready), name="ingest-fetch")
        try:
            while not self._stopping.is_set():
                if self._fatal is not None:
                    raise self._fatal
                if fetcher.done():
                    fetcher.result()  # re-raise what ended the fetch stage
                try:
                    prepared = await asyncio.wait_for(ready.get(), timeout=0.5)
                except TimeoutError:
                    prepared = None
                if prepared is not None:
                    async with self._commit_lock:
                        await self._process(prepared)
                self._update_lag()
                await self._maybe_prune()
                await self._maybe_check_offsets()
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
            if self._reporting is not None:
                await self._reporting

    async def _fetch_loop(self, ready: asyncio.Queue[PreparedBatch]) -> None:
        while True:
            records = await self._fetch()
            if not records:
                continue
            prepared = await prepare(
                records,
                self._fetched,
                self._epochs,
                self._screen,
                self._settings.currency_rates,
                self._clock.now(),
                self._retention,
                present=present(self._clock),
            )
            if prepared is not None:
                await ready.put(prepared)

    async def _fetch(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """One getmany: its records follow on from the consumer's position when it returns.
        Records of several calls must not be merged: a rebalance between them seeks, and
        the first call's records would then not follow on from the claimed offset."""
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        out = await self._consumer.getmany(
            timeout_ms=self._settings.poll_timeout_ms,
            max_records=self._settings.max_batch_records,
        )
        return out

    async def _process(self, prepared: PreparedBatch) -> None:
        started = time.perf_counter()
        # Keep only parts that continue exactly where we committed under the same epoch; a
        # part prepared before a rebalance is dropped, and the seek on claim re-reads it.
        parts = [
            p
            for p in prepared.parts
            if self._epochs.get(p.tp) == p.epoch and self._committed.get(p.tp) == p.start
        ]
        if not parts:
            return
        if len(parts) != len(prepared.parts):
            prepared = _only(prepared, parts, self._settings, self._clock.now() - self._retention)
        retry = Retry(RETRY_BACKOFF, "ingest-batch")
        retrying_since = time.monotonic()
        poisoned = False
        while True:
            try:
                applied = await self._commit(prepared)
                break
            except repo.FencedError as exc:
                self._metrics.fenced.inc()
                log.warning("batch_fenced", error=str(exc))
                for part in parts:
                    self._forget(part.tp)
                return
            except repo.OffsetsMovedError as exc:
                # Every partition of the batch goes back, not only those whose stored
                # offset moved: the others were fetched past this batch (the next one is
                # prepared), and with nothing committed they would never be read again.
                self._rewind({(p.tp.topic, p.tp.partition): p.start for p in parts} | exc.stored)
                return
            except Exception as exc:
                if is_retriable(exc):
                    # Safe even when the commit's outcome is unknown (the connection dropped
                    # during COMMIT): a batch that did commit finds the stored offsets at its
                    # end, not its start, and is rewound past instead of applied twice.
                    spent = time.monotonic() - retrying_since
                    if spent > self._settings.retry_budget_seconds or (
                        self._stopping.is_set() and retry.failures >= 2
                    ):
                        raise
                    await retry.pause(
                        exc,
                        partitions=[locate(p.tp.topic, p.tp.partition, p.start) for p in parts],
                    )
                    continue
                if poisoned or not _may_be_poison(exc):
                    raise
                # The database refused the batch for what is in it: find the events it
                # refuses on their own, dead-letter them, and commit the rest.
                poisoned = True
                poison = await self._find_poison(prepared)
                if not poison:
                    raise
                prepared = without_poison(
                    prepared,
                    poison,
                    self._settings.currency_rates,
                    self._clock.now() - self._retention,
                )
        for part in parts:
            self._committed[part.tp] = part.end
        self._last_progress = time.monotonic()
        self.batches_committed += 1
        self._metrics.observe_batch(
            applied, len(prepared.events) - applied, time.perf_counter() - started
        )
        self._report_offsets({p.tp: p.end for p in parts})

    async def _find_poison(self, prepared: PreparedBatch) -> dict[str, str]:
        """The events the database refuses on their own, each with its error: halves of the
        batch are applied in transactions that always roll back, down to single events, so
        a batch of n events with one poison costs about 2 log2(n) trials. A failure that
        only a combination of events causes finds nothing, and the caller re-raises."""
        now = self._clock.now()
        retention_start = now - self._retention
        poison: dict[str, str] = {}

        async def trial(conn: Any, events: list[Any]) -> None:
            if not events:
                return
            changes = build_changes(events, self._settings.currency_rates, retention_start)
            try:
                async with conn.transaction():
                    await repo.insert_interactions(conn, changes.window_rows, changes.pending)
                    await repo.apply_batch(conn, changes.statements)
                    await repo.merge_traits(conn, changes.traits)
                    raise _TrialRolledBack
            except _TrialRolledBack:
                return
            except asyncpg.PostgresError as exc:
                if is_retriable(exc) or not _may_be_poison(exc):
                    raise
                if len(events) == 1:
                    error = poison[events[0].event_id] = f"{exc.sqlstate}: {exc}"
                    log.warning("poison_event", event_id=events[0].event_id, error=error)
                    return
            middle = len(events) // 2
            await trial(conn, events[:middle])
            await trial(conn, events[middle:])

        async with pg_connection(self._engine) as conn:
            await trial(conn, list(prepared.events.values()))
        return poison

    def _rewind(self, stored: dict[tuple[str, int], int]) -> None:
        """Resume these partitions from their stored offsets: what came after them was lost
        with a PostgreSQL crash, or never committed, and is read again. The batch prepared
        meanwhile no longer starts where we are, and is dropped."""
        for (topic, partition), offset in stored.items():
            tp = TopicPartition(topic, partition)
            if tp not in self._epochs:
                continue
            self._metrics.rewound.inc()
            log.warning(
                "offsets_rewound",
                partition=locate(topic, partition, offset),
                was=self._committed.get(tp),
            )
            self._committed[tp] = self._fetched[tp] = offset
            self._consumer.seek(tp, offset)

    def _report_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        """Copy committed offsets to Kafka in the background, one request at a time.

        They are informational (lag in standard tools); the truth is in PostgreSQL, so a
        failure loses nothing, and the next batch need not wait for the round trip."""
        self._unreported.update(offsets)
        if self._reporting is None or self._reporting.done():
            self._reporting = asyncio.create_task(self._report_loop(), name="ingest-report")

    async def _report_loop(self) -> None:
        while self._unreported:
            offsets, self._unreported = self._unreported, {}
            with contextlib.suppress(Exception):
                await self._consumer.commit(offsets)
            # At most one request a second: at a low rate each batch would otherwise pay
            # one, and the copy only needs to be fresh enough for lag dashboards.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), REPORT_INTERVAL_SECONDS)

    async def _commit(self, prepared: PreparedBatch) -> int:
        """Apply one batch; returns how many events were new. The order is the guarantee:

        1. dead letters are written to Kafka and acknowledged first, so an offset is never
           committed past a bad record that is not yet safe on its dead-letter topic (a
           crash in between re-sends it: dead letters are at-least-once, and their headers
           locate the source record for deduplication);
        2. then ONE PostgreSQL transaction: the offsets (fenced by our epoch, first, so the
           row locks are taken early), the dedup ledger, the aggregates, the traits and the
           segmentation queue. After a crash either all of it is there, or none of it and
           the batch is read again from the stored offsets.

        That is also why the transaction need not wait for its WAL flush: a PostgreSQL crash
        that loses an acknowledged batch loses its offsets with it, so the batch is read
        again. Nothing outside sees it first: the segmenter's own commits are synchronous
        and flush the WAL up to and past every batch it has read.
        """
        letters = [d for p in prepared.parts for d in p.dead_letters]
        if letters:
            await self._send_dead_letters(letters)
        if isinstance(self._clock, EventTimeClock):
            # A replay's "now" is its latest event: what this batch is queued for and
            # measured against, as the segmenter's event-time clock will be once it commits.
            self._clock.advance_to(
                max((p.max_event_at for p in prepared.parts if p.max_event_at), default=None)
            )
        now = self._clock.now()
        # A connection that stops answering (its server gone without a word) must not hold
        # the partitions forever: past the deadline it is closed, everything waiting on it
        # (the batch, or the pool's reset when it goes back) fails at once, and the batch
        # is retried on a new one.
        watchdog: asyncio.TimerHandle | None = None
        try:
            async with pg_connection(self._engine) as conn:
                watchdog = asyncio.get_running_loop().call_later(
                    self._settings.batch_timeout_seconds, _terminate_stuck, conn
                )
                return await self._apply(conn, prepared, now)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _apply(self, conn: Any, prepared: PreparedBatch, now: datetime) -> int:
        """The batch's one PostgreSQL transaction (see `_commit`)."""
        async with conn.transaction():
            await repo.skip_flush_wait(conn)
            parts = sorted(prepared.parts, key=lambda p: (p.tp.topic, p.tp.partition))
            await repo.advance_offsets(
                conn,
                [
                    (repo.Ownership(p.tp.topic, p.tp.partition, p.start, p.epoch), p.end)
                    for p in parts
                ],
                [p.max_event_at for p in parts],
            )
            ids = prepared.event_ids
            # Seen at the real present, whatever the clock: the window is measured against
            # how long the input topics keep their records, which is wall-clock time.
            fresh = await repo.keep_new_events(
                conn,
                ids,
                present(self._clock),
                expect_new=self._expect_new,
                arg=prepared.event_ids_arg,
            )
            # Duplicates come in runs (a producer retrying, a replayed topic): after one,
            # go straight to the conflict-aware insert until a batch comes clean again.
            self._expect_new = len(fresh) == len(ids)
            if not fresh:
                return 0
            changes = prepared.changes
            if len(fresh) != len(ids):
                changes = build_changes(
                    [prepared.events[i] for i in ids if i in fresh],
                    self._settings.currency_rates,
                    now - self._retention,
                )
            await repo.insert_interactions(conn, changes.window_rows, changes.pending)
            await repo.apply_batch(conn, changes.statements)
            await repo.merge_traits(conn, changes.traits)
            await repo.mark_with_args(conn, changes.queue_args, now)
        return len(fresh)

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Send dead letters and wait until Kafka has them all. A record too large for the
        dead-letter topic (above `DEAD_LETTER_MAX_BYTES`, or refused as too large) goes as
        a reference to where it is, so that no record can stop its partition."""
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
            futures.append(await self._send_dead_letter(letter, as_reference=False))
        results = await asyncio.gather(*futures, return_exceptions=True)
        retry = []
        for letter, result in zip(letters, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                retry.append(await self._send_dead_letter(letter, as_reference=True))
            elif isinstance(result, BaseException):
                raise result
        await asyncio.gather(*retry)

    async def _send_dead_letter(self, letter: DeadLetter, *, as_reference: bool) -> Any:
        rec = letter.record
        ours = dlq_headers(letter.reason, letter.detail, rec.topic, rec.partition, rec.offset)
        headers = [*(rec.headers or ()), *ours]
        if not as_reference and record_size(rec.key, rec.value, headers) <= DEAD_LETTER_MAX_BYTES:
            try:
                return await self._producer.send(
                    dlq_topic(rec.topic), value=rec.value, key=rec.key, headers=headers
                )
            except MessageSizeTooLargeError:
                pass  # the producer's own limit is lower than ours
        log.warning(
            "dead_letter_as_reference",
            record=locate(rec.topic, rec.partition, rec.offset),
            size_bytes=record_size(rec.key, rec.value, headers),
        )
        key = rec.key if rec.key is not None and len(rec.key) <= 1024 else None
        return await self._producer.send(
            dlq_topic(rec.topic),
            value=dead_letter_reference(rec.topic, rec.partition, rec.offset, rec.key, rec.value),
            key=key,
            headers=[*ours, (HEADER_REFERENCE, b"true")],
        )

    # ------------------------------------------------------------------ health
    def _lags(self) -> dict[TopicPartition, int]:
        """Per assigned partition, records not yet committed. An unclaimed partition counts
        all its records up to the high watermark (at least one): where its consumption
        stands is in PostgreSQL, which the claim could not read, and none of it is moving."""
        lags = {}
        for tp, committed in list(self._committed.items()):
            high = self._consumer.highwater(tp)
            if high is not None:
                lags[tp] = max(0, high - committed)
        for tp in self._unclaimed:
            lags[tp] = max(1, self._consumer.highwater(tp) or 0)
        return lags

    @property
    def unclaimed(self) -> list[str]:
        """Partitions assigned to this worker that it has not claimed."""
        return sorted(f"{tp.topic}[{tp.partition}]" for tp in self._unclaimed)

    def _update_lag(self) -> None:
        for tp, lag in self._lags().items():
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def total_lag(self) -> int:
        """Records known to be waiting on the partitions this worker owns."""
        return sum(self._lags().values())

    def is_stalled(self) -> bool:
        """True when records are waiting, or partitions unclaimed, and no batch has
        committed for `stall_seconds`."""
        if self.total_lag() == 0 and not self._unclaimed:
            self._last_progress = time.monotonic()
            return False
        return time.monotonic() - self._last_progress > self._settings.stall_seconds

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < self._settings.prune_interval_seconds:
            return
        self._last_prune = time.monotonic()
        now = self._clock.now()
        try:
            dedup, inter = await self._prune(now)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("prune_skipped", error=f"{type(exc).__name__}: {exc}")
            return
        self._metrics.prunes.inc()
        if dedup or inter:
            log.info("pruned", event_ids=dedup, interaction_rows=inter)

    async def _maybe_check_offsets(self) -> None:
        """Every `offset_check_seconds`, compare the stored offsets of our partitions with
        what we committed. A PostgreSQL crash can take back the last batches, offsets and
        all; the next batch of a partition notices (its start is not the stored offset),
        but a partition that gets no new record would wait for one, so this notices."""
        if time.monotonic() - self._last_offset_check < self._settings.offset_check_seconds:
            return
        self._last_offset_check = time.monotonic()
        try:
            async with self._commit_lock:
                owned = sorted((tp.topic, tp.partition) for tp in self._committed)
                if not owned:
                    return
                async with pg_connection(self._engine) as conn:
                    stored = await repo.stored_offsets(conn, owned)
                behind = {}
                for (topic, partition), (epoch, offset) in stored.items():
                    tp = TopicPartition(topic, partition)
                    if self._epochs.get(tp) == epoch and offset != self._committed.get(tp):
                        behind[(topic, partition)] = offset
                if behind:
                    self._rewind(behind)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("offset_check_skipped", error=f"{type(exc).__name__}: {exc}")

    async def _prune(self, now: datetime) -> tuple[int, int]:
        async with pg_connection(self._engine) as conn, conn.transaction():
            return await repo.prune(
                conn,
                present(self._clock) - self._dedup_window,
                now - self._retention,
            )


def _terminate_stuck(conn: Any) -> None:
    log.error("batch_connection_stuck", detail="closing the connection; the batch is retried")
    conn.terminate()


class _TrialRolledBack(Exception):
    """Rolls a trial transaction back once its statements went through."""


def _may_be_poison(exc: BaseException) -> bool:
    """Errors that the data of a batch can cause: data exceptions (a value out of range,
    a character the encoding refuses), integrity violations, program limits (a value too
    large for an index)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and str(sqlstate)[:2] in {"22", "23", "54"}


def _only(
    prepared: PreparedBatch,
    parts: list[Part],
    settings: IngestSettings,
    retention_start: datetime,
) -> PreparedBatch:
    """The batch restricted to `parts`: events of dropped partitions are left out."""
    ids = {eid for p in parts for eid in p.event_ids}
    events = {eid: ev for eid, ev in prepared.events.items() if eid in ids}
    changes = build_changes(list(events.values()), settings.currency_rates, retention_start)
    return PreparedBatch(parts, events, changes)
