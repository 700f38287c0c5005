"""The segmenter against real PostgreSQL, Redis and Kafka."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.segmenter.worker import Evaluator, evaluate_loop
from shared.clock import FixedClock
from shared.db.engine import create_engine
from shared.db.migrate import upgrade
from shared.events import decode_segment_change
from shared.kafka import make_consumer
from shared.segment_cache import SegmentCache
from shared.segmentation import OrderFact, PopulationStats, build_facts, evaluate
from shared.segmentation.facts import Interaction
from shared.settings import ConnectionSettings
from tests.conftest import MakeTopic, eventually, unique
from tests.support.segmenter import History, evaluator, ruleset, scalar, seed, segments

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def random_histories(n: int, seed_: int, now: datetime) -> list[History]:
    rng = random.Random(seed_)
    out = []
    for i in range(n):
        h = History(f"c{i:05d}")
        for _ in range(rng.choice((0, 0, 1, 2, 3, 6))):
            at = now - timedelta(seconds=rng.uniform(0, 400 * 86400))
            h.orders.append((at, Decimal(rng.randrange(100, 50_000)) / 100))
        for _ in range(rng.choice((0, 1, 3, 10))):
            at = now - timedelta(seconds=rng.uniform(0, 60 * 86400))
            h.interactions.append(Interaction(at, rng.choice(("page_view", "add_to_cart"))))
        if not h.orders and not h.interactions:
            h.interactions.append(Interaction(now - DAY, "login"))
        out.append(h)
    return out


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


async def run_until_idle(ev: Evaluator) -> None:
    while await ev.evaluate_due():
        pass


async def test_segments_match_the_core_on_ingested_facts(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    histories = random_histories(300, 1, NOW)
    await seed(engine, histories, NOW)
    rules = await ruleset(engine)
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules, batch_size=64))
    stored = await segments(engine)
    for h in histories:
        facts = build_facts(
            h.customer_id,
            NOW,
            orders=[OrderFact(at, amount) for at, amount in h.orders],
            interactions=h.interactions,
        )
        expected = evaluate(rules.definitions, facts, NOW, {}, PopulationStats())
        for dimension, decision in expected.assignments.items():
            assert stored[(h.customer_id, dimension)] == decision.segment, (h, dimension)
    # Every assignment is a recorded change with its reason and definition version.
    history = await scalar(engine, "SELECT count(*) FROM segment_history")
    assert history == len(stored)
    assert await scalar(engine, "SELECT count(*) FROM segment_outbox") == len(stored)
    doc = await cache.get(histories[0].customer_id)
    assert doc is not None
    assert doc.definition_version == rules.version
    assert {d: s.segment for d, s in doc.segments.items()} == {
        d: stored[(histories[0].customer_id, d)] for d in doc.segments
    }


async def test_customer_becomes_at_risk_on_time_without_an_event(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    turns_90_at = NOW + timedelta(seconds=3)
    await seed(
        engine,
        [
            History(
                "quiet",
                orders=[(NOW - 200 * DAY, Decimal(50)), (turns_90_at - 90 * DAY, Decimal(20))],
            )
        ],
        NOW,
    )
    clock = FixedClock(NOW)
    ev = evaluator(engine, cache, clock, await ruleset(engine))
    stopping = asyncio.Event()
    loop = asyncio.create_task(evaluate_loop(ev, stopping, idle_seconds=0.1))
    try:

        async def lifecycle_is(segment: str) -> bool:
            return (await segments(engine)).get(("quiet", "lifecycle")) == segment

        await eventually(lambda: lifecycle_is("active"), within_seconds=10, message="active")
        assert (
            await scalar(
                engine,
                "SELECT next_change_at FROM customer_evaluations WHERE customer_id = 'quiet'",
            )
            == turns_90_at
        )
        clock.set(turns_90_at)
        moved = time.monotonic()
        await eventually(lambda: lifecycle_is("at_risk"), within_seconds=5, message="at_risk")
        assert time.monotonic() - moved < 5
    finally:
        stopping.set()
        await loop
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT cause, reason, from_segment, evaluated_at FROM segment_history"
                    " WHERE customer_id = 'quiet' AND to_segment = 'at_risk'"
                )
            )
        ).one()
    assert (row.cause, row.from_segment, row.evaluated_at) == ("time", "active", turns_90_at)
    assert "days_since_last_order" in row.reason


async def test_two_evaluators_share_a_backlog_and_agree_with_one(
    engine: AsyncEngine, cache: SegmentCache, settings: ConnectionSettings
) -> None:
    histories = random_histories(1500, 2, NOW)
    await seed(engine, histories, NOW)
    rules = await ruleset(engine)
    clock = FixedClock(NOW)
    other_engine = create_engine(settings.database_url, settings.database_schema)
    try:
        pair = [
            evaluator(engine, cache, clock, rules, batch_size=50),
            evaluator(other_engine, cache, clock, rules, batch_size=50),
        ]
        claimed = await asyncio.gather(*(run_until_idle(e) for e in pair))
        del claimed
    finally:
        await other_engine.dispose()
    two = await segments(engine)

    single_schema = unique("single")
    single = create_engine(settings.database_url, single_schema)
    try:
        await upgrade(single, single_schema)
        await seed(single, histories, NOW)
        await run_until_idle(evaluator(single, cache, clock, await ruleset(single), batch_size=500))
        one = await segments(single)
        # Each customer was evaluated exactly once: one history row per assignment.
        assert await scalar(engine, "SELECT count(*) FROM segment_history") == len(two)
        assert await scalar(engine, "SELECT max(version) FROM customer_evaluations") == 1
    finally:
        async with single.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{single_schema}" CASCADE'))
        await single.dispose()
    assert two == one


async def test_redis_never_takes_an_older_version(cache: SegmentCache, engine: AsyncEngine) -> None:
    await seed(engine, [History("v", interactions=[Interaction(NOW - DAY, "login")])], NOW)
    rules = await ruleset(engine)
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
    doc = await cache.get("v")
    assert doc is not None
    newer = type(doc)(**{**_fields(doc), "version": doc.version + 5})
    older = type(doc)(**{**_fields(doc), "version": doc.version + 1})
    assert await cache.put_many([newer]) == 1
    assert await cache.put_many([older]) == 0
    after = await cache.get("v")
    assert after is not None
    assert after.version == doc.version + 5


def _fields(doc: Any) -> dict[str, Any]:
    return {f: getattr(doc, f) for f in doc.__struct_fields__}


@pytest.fixture
async def changes_topic(make_topic: MakeTopic) -> str:
    return await make_topic("changes", partitions=4)


async def read_changes(settings: ConnectionSettings, topic: str, expect: int) -> list[Any]:
    consumer = make_consumer(settings.kafka_bootstrap, topic, group_id=unique("g"))
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def test_outbox_waits_for_kafka_and_publishes_when_it_is_back(
    engine: AsyncEngine, cache: SegmentCache, settings: ConnectionSettings, changes_topic: str
) -> None:
    await seed(engine, random_histories(40, 3, NOW), NOW)
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), await ruleset(engine)))
    pending = await scalar(engine, "SELECT count(*) FROM segment_outbox")
    assert pending > 0
    metrics = SegmenterMetrics(CollectorRegistry())
    stopping = asyncio.Event()
    down = OutboxPublisher(engine, "127.0.0.1:1", changes_topic, metrics)
    task = asyncio.create_task(down.run(stopping))
    await asyncio.sleep(2)
    assert await scalar(engine, "SELECT count(*) FROM segment_outbox") == pending
    stopping.set()
    await task

    stopping = asyncio.Event()
    up = OutboxPublisher(engine, settings.kafka_bootstrap, changes_topic, metrics)
    task = asyncio.create_task(up.run(stopping))
    try:

        async def drained() -> bool:
            return bool(await scalar(engine, "SELECT count(*) FROM segment_outbox") == 0)

        await eventually(drained, within_seconds=30, message="outbox drained")
    finally:
        stopping.set()
        await task
    records = await read_changes(settings, changes_topic, pending)
    assert len(records) == pending
    events = [decode_segment_change(r.value) for r in records]
    async with engine.connect() as conn:
        ids = set(
            (await conn.execute(text("SELECT change_id::text FROM segment_history"))).scalars()
        )
    assert {e.id for e in events} == ids
    assert all(r.key.decode() == e.subject for r, e in zip(records, events, strict=True))
