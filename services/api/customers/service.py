"""Customers' segments: Redis first, PostgreSQL for whatever Redis cannot answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from services.api.customers import repository
from services.api.customers.cache import CacheReader
from services.api.customers.schemas import (
    AggregatesSummary,
    AudienceMembership,
    CustomerSegments,
    HistoryEntry,
    HistoryPage,
    SegmentAssignment,
)
from services.api.database import Database
from services.api.errors import ApiError, not_found
from services.api.metrics import CUSTOMER_READS
from services.api.pagination import decode_int_cursor, encode_cursor
from services.api.segments.service import DefinitionsCache, VersionInForce
from shared.facts import FactsPlan, metric_values, plan_for, read_facts
from shared.segment_cache import CachedAggregates, CachedCustomer
from shared.segmentation import CustomerFacts
from shared.segmentation.audiences import MEMBER
from shared.segmentation.events import BUILT_IN_EVENT_METRICS

HISTORY_CURSOR = "h"
_Segment = TypeVar("_Segment")


def _staleness(now: datetime, evaluated_at: datetime) -> float:
    return round(max((now - evaluated_at).total_seconds(), 0.0), 3)


def from_cache(
    doc: CachedCustomer, now: datetime, in_force: VersionInForce | None
) -> CustomerSegments:
    segments, scores = _in_force(doc.segments, doc.scores, doc.definition_version, in_force)
    audiences = _audiences_in_force(doc.audiences, doc.definition_version, in_force)
    return _answer(
        doc.customer_id,
        {
            dim: SegmentAssignment(
                segment=s.segment,
                since=s.since,
                reason=s.reason,
                definition_version=doc.definition_version,
            )
            for dim, s in segments.items()
        },
        {
            name: AudienceMembership(
                since=a.since, reason=a.reason, definition_version=doc.definition_version
            )
            for name, a in audiences.items()
        },
        scores,
        doc,
        now,
        "cache",
        _summary(doc.aggregates, doc.evaluated_at),
    )


def _in_force(
    segments: dict[str, _Segment],
    scores: dict[str, int | None],
    definition_version: int,
    in_force: VersionInForce | None,
) -> tuple[dict[str, _Segment], dict[str, int | None]]:
    """The segments and scores of an evaluation, less the dimensions and scores the version
    in force no longer has. Only an evaluation under an older version can hold those: the
    segmenter removes them in the commit of the customer's first evaluation under the new
    one. An evaluation under a version newer than this process has seen yet is left whole
    (versions only grow), rather than filtered by older definitions."""
    if in_force is None or definition_version >= in_force.version:
        return segments, scores
    dimensions, names = in_force.dimensions, in_force.scores
    return (
        {dim: s for dim, s in segments.items() if dim in dimensions},
        {name: score for name, score in scores.items() if name in names},
    )


def _audiences_in_force(
    audiences: dict[str, _Segment], definition_version: int, in_force: VersionInForce | None
) -> dict[str, _Segment]:
    """As `_in_force`, of audiences: an evaluation under an older version can hold an
    audience the version in force removed."""
    if in_force is None or definition_version >= in_force.version:
        return audiences
    return {name: a for name, a in audiences.items() if name in in_force.audiences}


def _split(
    stored: dict[str, repository.StoredSegment], in_force: VersionInForce | None
) -> tuple[dict[str, repository.StoredSegment], dict[str, repository.StoredSegment]]:
    """A customer's stored rows as (dimensions, audiences). An audience's row is stored like
    a dimension's, with segment `member`; a name the version in force has as a dimension
    stays one (a dimension may have a segment called `member`)."""
    dimensions, audiences = {}, {}
    known = frozenset() if in_force is None else in_force.dimensions
    for name, row in stored.items():
        if row.segment == MEMBER and name not in known:
            audiences[name] = row
        else:
            dimensions[name] = row
    return dimensions, audiences


class _Evaluated(Protocol):
    @property
    def definition_version(self) -> int: ...
    @property
    def evaluated_at(self) -> datetime: ...
    @property
    def next_change_at(self) -> datetime | None: ...


def _answer(
    customer_id: str,
    segments: dict[str, SegmentAssignment],
    audiences: dict[str, AudienceMembership],
    scores: dict[str, int | None],
    evaluation: _Evaluated,
    now: datetime,
    source: Literal["cache", "database"],
    aggregates: AggregatesSummary | None,
) -> CustomerSegments:
    """The answer from either source: both carry the evaluation's version and times."""
    return CustomerSegments(
        customer_id=customer_id,
        segments=segments,
        audiences=dict(sorted(audiences.items())),
        # By name from both sources: jsonb keeps its keys in an order of its own.
        scores=dict(sorted(scores.items())),
        definition_version=evaluation.definition_version,
        evaluated_at=evaluation.evaluated_at,
        next_change_at=evaluation.next_change_at,
        staleness_seconds=_staleness(now, evaluation.evaluated_at),
        source=source,
        aggregates=aggregates,
    )


def _summary(agg: CachedAggregates | None, as_of: datetime) -> AggregatesSummary | None:
    """The summary of the cached document, or of facts read from the database."""
    if agg is None:
        return None
    return AggregatesSummary(
        as_of=as_of,
        order_count=agg.order_count,
        net_spend=agg.net_spend,
        spend_365d=agg.spend_365d,
        orders_365d=agg.orders_365d,
        first_order_at=agg.first_order_at,
        last_order_at=agg.last_order_at,
        interaction_count=agg.interaction_count,
        interactions_30d=agg.interactions_30d,
        last_interaction_at=agg.last_interaction_at,
        open_cart_at=agg.open_cart_at,
        metrics=agg.metrics,
        counted_since=agg.counted_since,
    )


def _aggregates(facts: CustomerFacts | None, metrics: Sequence[str]) -> CachedAggregates | None:
    """Facts read from the database, in the cached document's shape: one summary of both."""
    if facts is None:
        return None
    return CachedAggregates(
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
        metrics=metric_values(facts, metrics),
        counted_since=dict(facts.counted_since),
    )


_BUILT_IN_PLAN = FactsPlan(BUILT_IN_EVENT_METRICS, {})


async def from_database(
    db: Database, customer_ids: Sequence[str], now: datetime, in_force: VersionInForce | None
) -> dict[str, CustomerSegments]:
    definitions = None if in_force is None else in_force.definitions
    plan = _BUILT_IN_PLAN if definitions is None else plan_for(definitions, heads=False)
    declared = [] if definitions is None else list(definitions.event_metrics)
    async with db.read() as conn:
        stored = await repository.evaluations(conn, customer_ids)
        # The segmenter's own read model, without folding anything in: the values it would
        # evaluate with now.
        facts = (await read_facts(conn, list(stored), now, plan)).facts if stored else {}
    answers = {}
    for cid, e in stored.items():
        rows, members = _split(e.segments, in_force)
        segments, scores = _in_force(rows, e.scores, e.definition_version, in_force)
        audiences = _audiences_in_force(members, e.definition_version, in_force)
        answers[cid] = _answer(
            cid,
            {
                dim: SegmentAssignment(
                    segment=s.segment,
                    since=s.since,
                    reason=s.reason,
                    definition_version=s.definition_version,
                )
                for dim, s in segments.items()
            },
            {
                name: AudienceMembership(
                    since=a.since, reason=a.reason, definition_version=a.definition_version
                )
                for name, a in audiences.items()
            },
            scores,
            e,
            now,
            "database",
            _summary(_aggregates(facts.get(cid), declared), now),
        )
    return answers


class FallbackGate:
    """At most `slots` reads from PostgreSQL in place of the cache at once; past that, 503 at
    once. When this process is overloaded its cache reads time out, and each would turn into a
    read that costs several times more: measured, that turns a burst into a lasting collapse.
    Refusing the excess quickly keeps the process answering from the cache."""

    def __init__(self, slots: int) -> None:
        self._free = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._free.locked():
            raise ApiError(503, "overloaded", "too many reads are waiting for PostgreSQL")
        async with self._free:
            yield


async def read_customers(
    cache: CacheReader,
    db: Database,
    gate: FallbackGate,
    definitions: DefinitionsCache,
    customer_ids: Sequence[str],
    now: datetime,
) -> dict[str, CustomerSegments]:
    """Segments of the customers that have been evaluated; unknown ids are left out."""
    ids = list(dict.fromkeys(customer_ids))
    in_force = await definitions.version_in_force(db)
    docs = await cache.get_many(ids)
    found = {cid: from_cache(doc, now, in_force) for cid, doc in docs.items()}
    CUSTOMER_READS.labels("cache").inc(len(found))
    missing = [cid for cid in ids if cid not in found]
    if missing:
        async with gate.slot():
            from_db = await from_database(db, missing, now, in_force)
        CUSTOMER_READS.labels("database").inc(len(from_db))
        found.update(from_db)
    return {cid: found[cid] for cid in ids if cid in found}


async def read_customer(
    cache: CacheReader,
    db: Database,
    gate: FallbackGate,
    definitions: DefinitionsCache,
    customer_id: str,
    now: datetime,
) -> CustomerSegments:
    found = await read_customers(cache, db, gate, definitions, [customer_id], now)
    if customer_id not in found:
        raise customer_not_found(customer_id)
    return found[customer_id]


def customer_not_found(customer_id: str) -> Exception:
    return not_found(
        "customer_not_found",
        f"no segments for customer {customer_id!r}: unknown, or not evaluated yet",
    )


async def history_page(
    db: Database, customer_id: str, cursor: str | None, limit: int
) -> HistoryPage:
    before = None if cursor is None else decode_int_cursor(HISTORY_CURSOR, cursor)
    async with db.read() as conn:
        rows = await repository.history(conn, customer_id, before, limit + 1)
        if not rows and not await repository.is_known(conn, customer_id):
            raise customer_not_found(customer_id)
    items = [HistoryEntry(**dict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return HistoryPage(
        customer_id=customer_id,
        items=items,
        next_cursor=encode_cursor(HISTORY_CURSOR, str(items[-1].id)) if more else None,
    )
