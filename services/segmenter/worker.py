"""The evaluation loop: take due customers off the queue, evaluate, record every change.

Delivery guarantee (`evaluate_due`): the claim, the new assignments, the history, the
outbox records and the next wake-up commit in one PostgreSQL transaction (`_commit`); how
a claim avoids holding queue rows while evaluating is in queue.py. Redis and Kafka
are written after commit, from what was committed, so neither can show a change that the
database does not have; the outbox publishes each change at least once, under a stable id.
Before the transaction the batch's cached documents are marked stale (cache.py), so that
none older than what commits can be served once it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, cast

__all__ = ["Evaluator", "LeasePacer", "Ruleset", "Writes", "evaluate_loop"]

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import definitions, queue, sizes_repository
from services.segmenter import repository as repo
from services.segmenter.cache import CacheWriter
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.pacing import LeasePacer
from services.segmenter.ruleset import Ruleset
from shared.clock import Clock, is_running
from shared.db.engine import pg_connection
from shared.events.segment_change import (
    Cause,
    SegmentChange,
    segment_change_event,
    segment_change_id,
)
from shared.facts import Fold, metric_values, read_facts, write_fold
from shared.retry import Backoff, Retry, is_retriable
from shared.segment_cache import CachedAggregates, CachedCustomer, CachedSegment, SegmentCache
from shared.segmentation import CustomerFacts, Evaluation, UncoveredCustomerError, evaluate
from shared.segmentation.audiences import MEMBER

log = structlog.get_logger("segmenter")

_event_encoder = msgspec.json.Encoder()
YIELD_EVERY_CUSTOMERS = 16
EVALUATE_BACKOFF = Backoff(0.1, 5.0)
CAUSE_NOTE = {
    "population": "cut-offs recomputed from the population; ",
    "definitions": "new segment definitions; ",
    "time": "time passed; ",
    "repair": "aggregates repaired; ",
    "import": "history imported; ",
    "event": "",
}


class Evaluator:
    """Evaluates batches of due customers; several processes can run one each."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: SegmentCache,
        clock: Clock,
        metrics: SegmenterMetrics,
        ruleset: Ruleset,
        *,
        batch_size: int = 500,
        on_changes: Any = None,
        zone: tzinfo = UTC,
    ) -> None:
        self._engine = engine
        self._zone = zone  # where birthdays begin (STREAMSEG_BIRTHDAY_TIME_ZONE)
        self._cache = CacheWriter(cache, metrics)
        self._clock = clock
        self._metrics = metrics
        self.ruleset = ruleset
        self._batch_size = batch_size
        self._on_changes = on_changes
        self._change_counters: dict[tuple[str, str], Any] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def evaluate_due(self, conn: Any = None) -> int:
        """Evaluate one batch of due customers; returns how many were leased.

        `conn` is the caller's own connection (an evaluation loop keeps one: a pooled one
        costs a ping and a reset, two more round trips, per batch), else one from the pool.
        """
        if not is_running(self._clock):
            return 0
        if conn is None:
            async with pg_connection(self._engine) as pooled:
                return await self._evaluate_batch(pooled)
        return await self._evaluate_batch(conn)

    async def _evaluate_batch(self, conn: Any) -> int:
        now = self._clock.now()
        # One view of the rules for the whole batch: the population loop replaces the stats
        # while the batch yields, and the commit checks the very stats it evaluated with.
        rules = dataclasses.replace(self.ruleset)
        if rules.is_awaiting_population:
            return 0
        started = time.perf_counter()
        writes = Writes()
        ids = await queue.lease_due(conn, now, self._batch_size)
        if not ids:
            # No lease was taken (a lease is taken only with its row), so none to release:
            # an idle loop costs one statement per poll.
            return 0
        try:
            batch = await repo.load_leased(conn, ids)
            read = await read_facts(
                conn, [b.due.customer_id for b in batch if b.has_facts], now, rules.facts_plan
            )
            writes.fold = read.fold
            if any(b.due.cause == "import" for b in batch):
                writes.import_publish = await repo.import_publish_policy(conn)
            # Evaluating holds no row lock: ingest can queue these customers meanwhile.
            for i, leased in enumerate(batch, 1):
                facts = read.facts.get(leased.due.customer_id)
                if facts is not None:
                    self._evaluate_one(leased.due, facts, leased.state, now, rules, writes)
                if i % YIELD_EVERY_CUSTOMERS == 0:
                    # The other evaluation loops' statements complete meanwhile; each of
                    # their round trips would otherwise wait out this whole batch.
                    await asyncio.sleep(0)
            due = [leased.due for leased in batch]
            # Before the transaction, so no row lock waits for Redis; under the leases, so no
            # other evaluation of these customers runs in between.
            writes.unmarked = await self._cache.mark_stale(writes.docs)
            try:
                async with conn.transaction():
                    await self._commit(conn, due, now, writes, rules)
            except DefinitionsMovedError as exc:
                # Rolled back like a population move: activation committed another version,
                # and nothing evaluated under the old one may commit after it.
                await definitions.sync(conn, self.ruleset)
                self._metrics.definitions_retries.inc()
                log.info("definitions_moved_during_batch", customers=len(due), error=str(exc))
                return len(due)
            except PopulationMovedError as exc:
                # Rolled back, queue rows included: the customers are leased again, and
                # evaluated with the stats that are now the newest. (The marks stay: a mark
                # only drops documents, and the API answers a miss from PostgreSQL.)
                self.ruleset.adopt_population(
                    await repo.latest_population_stats(conn, rules.version)
                )
                self._metrics.population_retries.inc()
                log.info("population_moved_during_batch", customers=len(due), error=str(exc))
                return len(due)
        finally:
            await queue.release_leases(conn)
        self._metrics.evaluations.inc(len(writes.evaluations))
        self._metrics.evaluation_seconds.observe(time.perf_counter() - started)
        self._observe_lateness(due, now)
        # After commit, from what was committed. A write that fails leaves a miss (the mark
        # dropped the old document), and the API answers from PostgreSQL.
        await self._cache.write(writes.docs)
        if writes.history and self._on_changes is not None:
            self._on_changes()
        return len(due)

    async def _commit(
        self, conn: Any, due: list[queue.Due], now: datetime, writes: Writes, rules: Ruleset
    ) -> None:
        """The batch's one transaction: state, then history and outbox, then the cache
        repairs of customers Redis could not mark stale, then the queue rows.

        The evaluation version only moves from the version read to the next one, and the
        customer is leased meanwhile, so no other evaluation can have committed in between;
        if one did, the write stops here and the transaction rolls back.

        Nor can an evaluation made with population stats older than the newest settle a
        customer the newest moved. Another process's recompute stores the new stats and
        queues exactly the customers they move, in one transaction R; the statement that
        saves the state (S) also reads the newest stats id, and the batch rolls back
        unless it is the one it evaluated with. If R committed before S, S sees its stats:
        rollback, whether R came before the customers were read or after. If R commits
        after S, R's queue writes meet settle at each moved customer's queue row: R wrote
        it first (settle skips a row R holds, and sees a row R committed as changed) and
        the customer stays queued, or settle did (R waits for this commit, then queues the
        customer again). Either way the customer is evaluated again, and that evaluation
        meets the new stats at its own S.
        """
        saved = await repo.save_state(
            conn, writes.evaluations, writes.segments, writes.removed, rules.version
        )
        if writes.evaluations and saved.definition_version != rules.version:
            raise DefinitionsMovedError(rules.version, saved.definition_version)
        if writes.evaluations and saved.population_id != rules.population_id:
            raise PopulationMovedError(rules.population_id, saved.population_id)
        if saved.evaluations != len(writes.evaluations):
            raise EvaluationRaceError(len(writes.evaluations) - saved.evaluations)
        # What the facts read folded in, committed with the evaluations made from it (or
        # rolled back with them, and read again).
        await write_fold(conn, writes.fold)
        if writes.history:
            # Size history's input, committed with the changes it counts (sizes.py); before
            # the history lock, which serialises the segmenters until commit.
            await sizes_repository.add_deltas(
                conn, ((h.dimension, h.from_segment, h.to_segment) for h in writes.history)
            )
            # Under a lock held to commit: history ids are then assigned in commit order
            # across segmenter processes, so a reader resuming "after id N" (the API's
            # change stream) can never miss a change committed later with a smaller id.
            await repo.lock_history(conn)
            await repo.insert_changes(conn, writes.history, writes.payloads)
        if writes.unmarked:
            # Committed with the evaluations or not at all: a Redis that missed the mark has
            # its stale documents dropped by the repair loop once it answers.
            await repo.queue_cache_repairs(conn, writes.unmarked)
        # Last: ingest waits for the queue rows this locks, so they are locked only for the
        # commit. A customer whose row ingest changed meanwhile stays queued, due now, and
        # schedules its wake-up when evaluated again.
        await queue.settle(conn, due, now, dict(writes.wakeups))

    def _evaluate_one(
        self,
        item: queue.Due,
        facts: CustomerFacts,
        state: repo.State,
        now: datetime,
        rules: Ruleset,
        writes: Writes,
    ) -> None:
        try:
            result = evaluate(
                rules.definitions, facts, now, state.assignments, rules.population, zone=self._zone
            )
        except UncoveredCustomerError as exc:
            # A definitions gap is permanent for this customer: count it, keep going.
            self._metrics.uncovered.inc()
            log.error("customer_uncovered", customer_id=item.customer_id, error=str(exc))
            return
        cid = item.customer_id
        sequence = state.change_sequence
        incarnation = state.incarnation or str(uuid.uuid4())
        reasons = dict(state.reasons)
        cause_of_evaluation = cast(Cause, item.cause)
        changes: list[tuple[str, str | None, str | None, str, Cause, datetime | None]] = [
            (
                dimension,
                decision.previous,
                decision.segment,
                decision.reason,
                cause_of_evaluation,
                decision.since,
            )
            for dimension, decision in result.assignments.items()
            if decision.changed
        ]
        changes.extend(_audience_changes(state, result, cause_of_evaluation))
        # A dimension (or audience) the definitions in force no longer have: its member
        # leaves it.
        defined = result.assignments.keys() | result.audiences.keys()
        for dimension in sorted(state.assignments.keys() - defined):
            segment = state.assignments[dimension].segment
            kind = "audience" if segment == MEMBER else "dimension"
            reason = f"{kind} {dimension!r} is not in definitions version {rules.version}"
            changes.append((dimension, segment, None, reason, "definitions", None))
        for dimension, before, after, why, cause, since in changes:
            sequence += 1
            reason = CAUSE_NOTE.get(cause, "") + why
            event = segment_change_event(
                change_id=segment_change_id(cid, dimension, sequence, incarnation),
                change=SegmentChange(
                    customer_id=cid,
                    dimension=dimension,
                    from_segment=before,
                    to_segment=after,
                    reason=reason,
                    cause=cause,
                    definition_version=rules.version,
                    caused_by_event_time=item.cause_event_at,
                    evaluated_at=now,
                    sequence=sequence,
                ),
            )
            writes.history.append(
                repo.HistoryRow(
                    change_id=event.id,
                    customer_id=cid,
                    dimension=dimension,
                    from_segment=before,
                    to_segment=after,
                    reason=reason,
                    cause=cause,
                    definition_version=rules.version,
                    caused_by_event_at=item.cause_event_at,
                    evaluated_at=now,
                    sequence=sequence,
                )
            )
            # History is always written; a backfill's changes reach the topic one by one
            # only under the publish policy "each" (backfill.py sends the summary), and so
            # do an import's under its own policy (services/importer sends its summary).
            if cause == "definitions":
                is_published = rules.publish == "each"
            elif cause == "import":
                is_published = writes.import_publish == "each"
            else:
                is_published = True
            writes.payloads.append(_event_encoder.encode(event) if is_published else None)
            if after is not None:
                assert since is not None
                reasons[dimension] = reason
                writes.segments.append((cid, dimension, after, since, reason, rules.version, now))
                self._count_change(dimension, after)
            else:
                # An exit: the dimension was removed, or the customer left an audience.
                writes.removed.append((cid, dimension))
                reasons.pop(dimension, None)
        version = state.version + 1
        scores = _scores_json(result.scores)
        writes.evaluations.append(
            (cid, version, sequence, rules.version, now, result.next_change_at, incarnation, scores)
        )
        if result.next_change_at is not None:
            writes.wakeups.append((cid, result.next_change_at))
        writes.docs.append(_document(cid, version, rules, now, result, facts, reasons))

    def _count_change(self, dimension: str, segment: str) -> None:
        # An audience counts its entries, as segment `member`.
        counter = self._change_counters.get((dimension, segment))
        if counter is None:
            counter = self._metrics.changes.labels(dimension, segment)
            self._change_counters[(dimension, segment)] = counter
        counter.inc()

    def _observe_lateness(self, due: list[queue.Due], now: datetime) -> None:
        """How long after being due each customer was evaluated."""
        for item in due:
            histogram = self._metrics.lateness_by_cause.get(item.cause)
            if histogram is not None:
                histogram.observe(max(0.0, (now - item.due_at).total_seconds()))


class EvaluationRaceError(RuntimeError):
    """Another evaluation of a leased customer committed: a broken lease, never expected."""

    def __init__(self, customers: int) -> None:
        super().__init__(f"{customers} customers were evaluated elsewhere meanwhile")


class DefinitionsMovedError(Exception):
    """Another version was activated than the batch evaluated under: roll it back and
    evaluate its customers again under the version in force."""

    retriable = True

    def __init__(self, evaluated_under: int, in_force: int | None) -> None:
        super().__init__(f"evaluated under definitions {evaluated_under}, in force {in_force}")


class PopulationMovedError(Exception):
    """Newer population stats were stored than the batch evaluated with: roll it back and
    evaluate its customers again with them."""

    retriable = True

    def __init__(self, evaluated_with: int | None, newest: int | None) -> None:
        super().__init__(f"evaluated with population stats {evaluated_with}, newest {newest}")


@dataclass
class Writes:
    """What one batch writes, collected before the statements that write it."""

    evaluations: list[tuple[str, int, int, int, datetime, datetime | None, str, str]] = field(
        default_factory=list
    )
    segments: list[tuple[str, str, str, datetime, str, int, datetime]] = field(default_factory=list)
    history: list[repo.HistoryRow] = field(default_factory=list)
    payloads: list[bytes | None] = field(default_factory=list)  # None: history only
    removed: list[tuple[str, str]] = field(default_factory=list)  # (customer, dimension)
    wakeups: list[tuple[str, datetime]] = field(default_factory=list)
    docs: list[CachedCustomer] = field(default_factory=list)
    # (customer id, version) of the documents Redis could not mark stale before commit.
    unmarked: list[tuple[str, int]] = field(default_factory=list)
    fold: Fold = field(default_factory=Fold)
    # The publish policy of the import being evaluated, read when the batch holds
    # customers queued with cause "import".
    import_publish: str = "each"


def _audience_changes(
    state: repo.State, result: Evaluation, cause: Cause
) -> list[tuple[str, str | None, str | None, str, Cause, datetime | None]]:
    """Entries (from none to `member`) and exits (from `member` to none) of audiences,
    against what is stored: a row of another kind under an audience's name (a dimension
    of that name removed) is left as an exit too."""
    changes: list[tuple[str, str | None, str | None, str, Cause, datetime | None]] = []
    for name, decision in result.audiences.items():
        stored = state.assignments.get(name)
        before = None if stored is None else stored.segment
        if before != decision.segment:
            changes.append((name, before, decision.segment, decision.reason, cause, decision.since))
    return changes


def _document(
    customer_id: str,
    version: int,
    rules: Ruleset,
    now: datetime,
    result: Evaluation,
    facts: CustomerFacts,
    reasons: dict[str, str],
) -> CachedCustomer:
    """The Redis document: current segments and audiences with the reason each was
    entered (audiences only while a member)."""
    cached = {
        dimension: CachedSegment(
            segment=decision.segment,
            since=decision.since,
            reason=reasons.get(dimension) or decision.reason,
        )
        for dimension, decision in result.assignments.items()
    }
    audiences = {
        name: CachedSegment(
            segment=MEMBER, since=decision.since, reason=reasons.get(name) or decision.reason
        )
        for name, decision in result.audiences.items()
        if decision.since is not None
    }
    return CachedCustomer(
        customer_id=customer_id,
        version=version,
        definition_version=rules.version,
        evaluated_at=now,
        next_change_at=result.next_change_at,
        segments=cached,
        audiences=audiences,
        scores=dict(result.scores),
        aggregates=CachedAggregates(
            order_count=facts.order_count,
            net_spend=facts.net_spend,
            spend_365d=facts.events["spend_365d"],
            orders_365d=facts.events["orders_365d"],
            first_order_at=facts.first_order_at,
            last_order_at=facts.last_order_at,
            interaction_count=facts.interaction_count,
            interactions_30d=facts.events["interactions_30d"],
            last_interaction_at=facts.last_interaction_at,
            open_cart_at=facts.last_cart_at,
            metrics=metric_values(facts, rules.definitions.event_metrics),
            counted_since=dict(facts.counted_since),
        ),
    )


def _scores_json(scores: Any) -> str:
    return _event_encoder.encode(dict(scores)).decode()


async def evaluate_loop(
    evaluator: Evaluator,
    stopping: asyncio.Event,
    pacer: LeasePacer,
    backoff: Backoff = EVALUATE_BACKOFF,
) -> None:
    """Evaluate until stopped, on a connection of its own, leasing when `pacer` says (at
    once through a backlog, else in turns: services/segmenter/pacing.py). After a retriable
    error (PostgreSQL restarting, recovering, a deadlock)
    it drops the connection, backs off and goes on with a new one: the failed batch rolled
    back, and its leases went with the connection or were released, so nothing committed is
    lost and its customers are still queued. Any other error ends the loop, and the process."""
    retry = Retry(backoff, "evaluate", stopping)
    while not stopping.is_set():
        try:
            async with pg_connection(evaluator.engine) as conn:
                while not stopping.is_set():
                    async with pacer.turn(stopping) as go:
                        if not go:
                            break
                        claimed = await evaluator.evaluate_due(conn)
                    pacer.leased(claimed)
                    retry.succeeded()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            await retry.pause(exc)
