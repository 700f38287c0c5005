"""Activating definitions while the segmenter runs: the commit fence, the backfill and its
publish policies, removed dimensions, and live rows ahead of the backfill.

Expected states are worked out in each test from the histories it seeded, not with the
service's code."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as ingest
from services.segmenter import definitions, queue
from services.segmenter.backfill import BackfillFeeder
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.segmenter.ruleset import Ruleset
from services.segmenter.worker import Evaluator
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.definitions.activation import activate_content
from shared.events import decode_segment_change
from shared.events.definitions_activated import (
    DEFINITIONS_EVENT_KEY,
    decode_definitions_activated,
)
from shared.kafka import make_consumer
from shared.segment_cache import SegmentCache
from shared.segmentation.facts import Interaction
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, MakeTopic, eventually, unique
from tests.support.segmenter import (
    History,
    evaluator,
    ruleset,
    run_segmenter,
    scalar,
    seed,
    segments,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DEFAULTS = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
# Engaged within 3 days instead of 7: customers last seen 3 to 7 days ago become casual.
STRICTER = DEFAULTS.replace(
    "days_since_last_interaction < 7", "days_since_last_interaction < 3"
).replace("days_since_last_interaction >= 7", "days_since_last_interaction >= 3")
# The rfm dimension removed, the rest unchanged.
WITHOUT_RFM = DEFAULTS[: DEFAULTS.index("  rfm:\n")] + DEFAULTS[DEFAULTS.index("  engagement:\n") :]


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


@pytest.fixture
async def changes_topic(make_topic: MakeTopic) -> str:
    return await make_topic("changes", partitions=2)


def histories(n: int) -> list[History]:
    """Customer i was last seen (i % 10) days ago: 0-2 engaged under both rules, 3-6 engaged
    only under the 7-day one, 7-9 casual under both."""
    return [
        History(
            f"c{i:04d}",
            interactions=[Interaction(NOW - (i % 10) * DAY - timedelta(hours=1), "login")],
        )
        for i in range(n)
    ]


def moved_by_stricter(hs: list[History]) -> set[str]:
    return {h.customer_id for h in hs if 3 <= int(h.customer_id[1:]) % 10 <= 6}


async def drain(engine: AsyncEngine, settings: ConnectionSettings, topic: str) -> None:
    metrics = SegmenterMetrics(CollectorRegistry())
    stopping = asyncio.Event()
    publisher = OutboxPublisher(engine, settings.kafka_bootstrap, topic, metrics)
    task = asyncio.create_task(publisher.run(stopping))
    try:

        async def drained() -> bool:
            return bool(await scalar(engine, "SELECT count(*) FROM segment_outbox") == 0)

        await eventually(drained, within_seconds=30, message="outbox drained")
    finally:
        stopping.set()
        await task


async def read_topic(settings: ConnectionSettings, topic: str, expect: int) -> list[Any]:
    """Every record on the topic: waits for `expect`, then a little longer for extras."""
    consumer = make_consumer(settings.kafka_bootstrap, topic, group_id=unique("g"))
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        quiet_until = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(records)
            if len(out) >= expect:
                quiet_until = quiet_until or loop.time() + 2
                if loop.time() > quiet_until:
                    break
    finally:
        await consumer.stop()
    return out


async def activate(engine: AsyncEngine, content: str, replaces: int, **kwargs: Any) -> int:
    async with pg_connection(engine) as conn, conn.transaction():
        stored = await activate_content(conn, content, replaces=replaces, actor="test", **kwargs)
    return stored.version


async def backfill_until_complete(
    engine: AsyncEngine, ev: Evaluator, rules: Ruleset, clock: FixedClock
) -> None:
    async with pg_connection(engine) as conn:
        await definitions.sync(conn, rules)
    feeder = BackfillFeeder(
        engine, rules, clock, SegmenterMetrics(CollectorRegistry()), rate_per_second=200
    )
    for _ in range(2000):
        step = await feeder.step()
        while await ev.evaluate_due():
            pass
        if step == "completed":
            return
    raise AssertionError("the backfill did not complete")


@pytest.mark.parametrize("publish", ["none", "summary", "each"])
async def test_a_backfill_follows_its_publish_policy(
    engine: AsyncEngine,
    cache: SegmentCache,
    settings: ConnectionSettings,
    changes_topic: str,
    publish: str,
) -> None:
    hs = histories(120)
    await seed(engine, hs, NOW)
    rules = await ruleset(engine)
    clock = FixedClock(NOW)
    ev = evaluator(engine, cache, clock, rules, batch_size=50)
    while await ev.evaluate_due():
        pass
    first = await scalar(engine, "SELECT count(*) FROM segment_history")
    await drain(engine, settings, changes_topic)

    replaced = rules.version
    version = await activate(engine, STRICTER, replaced, publish=publish)
    await backfill_until_complete(engine, ev, rules, clock)
    await drain(engine, settings, changes_topic)

    moved = moved_by_stricter(hs)
    async with pg_connection(engine) as conn:
        rows = await conn.fetch(
            "SELECT customer_id, dimension, from_segment, to_segment, cause, definition_version"
            " FROM segment_history WHERE definition_version = $1",
            version,
        )
        backfill = await store.get_backfill(conn, version)
    # History is always written: one row per moved customer, none for the others.
    assert {r["customer_id"] for r in rows} == moved
    assert {(r["dimension"], r["from_segment"], r["to_segment"], r["cause"]) for r in rows} == {
        ("engagement", "engaged", "casual", "definitions")
    }
    assert backfill is not None
    assert backfill.completed_at is not None
    assert backfill.queued == len(hs)

    records = await read_topic(
        settings,
        changes_topic,
        first + (len(moved) if publish == "each" else 1 if publish == "summary" else 0),
    )
    customer_events = [r for r in records if r.key != DEFINITIONS_EVENT_KEY.encode()]
    summaries = [r for r in records if r.key == DEFINITIONS_EVENT_KEY.encode()]
    backfill_events = [
        e
        for e in map(lambda r: decode_segment_change(r.value), customer_events)
        if e.data.cause == "definitions"
    ]
    if publish == "each":
        assert {e.data.customer_id for e in backfill_events} == moved
        assert not summaries
    else:
        assert backfill_events == []
        assert len(customer_events) == first
    if publish == "summary":
        assert len(summaries) == 1
        summary = decode_definitions_activated(summaries[0].value).data
        assert summary.version == version
        assert summary.replaces == replaced
        assert summary.changed_dimensions == ["engagement"]
        assert summary.moved == len(moved)
        assert [
            (t.dimension, t.from_segment, t.to_segment, t.customers) for t in summary.transitions
        ] == [("engagement", "engaged", "casual", len(moved))]
    else:
        assert not summaries


async def test_a_removed_dimension_is_left_with_an_exit_change(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    hs = histories(30)
    await seed(engine, hs, NOW)
    rules = await ruleset(engine)
    clock = FixedClock(NOW)
    ev = evaluator(engine, cache, clock, rules)
    while await ev.evaluate_due():
        pass
    before = await segments(engine)
    version = await activate(engine, WITHOUT_RFM, rules.version)
    async with pg_connection(engine) as conn:
        assert (await store.get_version(conn, version)).changed_dimensions == ("rfm",)  # type: ignore[union-attr]
    await backfill_until_complete(engine, ev, rules, clock)

    after = await segments(engine)
    assert {d for _, d in after} == {"lifecycle", "value_tier", "engagement"}
    assert after == {k: v for k, v in before.items() if k[1] != "rfm"}
    async with pg_connection(engine) as conn:
        exits = await conn.fetch(
            "SELECT customer_id, from_segment, cause, definition_version FROM segment_history"
            " WHERE to_segment IS NULL"
        )
    assert sorted((r["customer_id"], r["from_segment"]) for r in exits) == sorted(
        (c, s) for (c, d), s in before.items() if d == "rfm"
    )
    assert {(r["cause"], r["definition_version"]) for r in exits} == {("definitions", version)}
    doc = await cache.get(hs[0].customer_id)
    assert doc is not None
    assert set(doc.segments) == {"lifecycle", "value_tier", "engagement"}


async def test_live_rows_are_leased_before_a_backfill(engine: AsyncEngine) -> None:
    async with pg_connection(engine) as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO segmentation_queue (customer_id, due_at, cause)
            SELECT 'b' || i, $1::timestamptz - interval '1 hour', 'definitions'
            FROM generate_series(1, 20) i
            UNION ALL
            SELECT 'l' || i, $1::timestamptz - interval '1 second', 'event'
            FROM generate_series(1, 5) i
            """,
            NOW,
        )
    async with pg_connection(engine) as conn:
        first = await queue.lease_due(conn, NOW, 8)
        await queue.release_leases(conn)
    # The live rows came later than every backfill row, and still go first.
    assert sorted(first[:5]) == [f"l{i}" for i in range(1, 6)]
    assert all(c.startswith("b") for c in first[5:])
    assert len(first) == 8


async def test_an_event_makes_a_backfill_row_live_and_due_from_the_event(
    engine: AsyncEngine,
) -> None:
    async with pg_connection(engine) as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO segmentation_queue (customer_id, due_at, cause)"
            " VALUES ('b1', $1::timestamptz - interval '1 hour', 'definitions'),"
            " ('l1', $1::timestamptz - interval '1 hour', 'time')",
            NOW,
        )
        await ingest.mark_for_segmentation(conn, ["b1", "l1"], NOW, [NOW, NOW])
        rows = await conn.fetch("SELECT customer_id, due_at, cause FROM segmentation_queue")
    found = {r["customer_id"]: (r["due_at"], r["cause"]) for r in rows}
    # The backfill's row is live now, due from the event; a live row keeps its earlier time.
    assert found == {"b1": (NOW, "event"), "l1": (NOW - timedelta(hours=1), "event")}


async def test_no_evaluation_under_the_old_version_commits_after_the_activation(
    engine: AsyncEngine, service_env: dict[str, str], changes_topic: str, tmp_path: Any
) -> None:
    """Two segmenter processes evaluate a stream of new customers while a version is
    activated: every history row committed after the activation's commit names the new
    version, and every row names a stored version."""
    env = service_env | {
        "STREAMSEG_SEGMENTER_CLOCK": f"fixed:{NOW.isoformat()}",
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes_topic,
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "STREAMSEG_SEGMENTER_BATCH_SIZE": "40",
        "STREAMSEG_SEGMENTER_DEFINITIONS_POLL_SECONDS": "2",
    }
    await seed(engine, histories(200), NOW)
    procs = [run_segmenter(env, tmp_path / f"segmenter-{i}.log") for i in range(2)]
    stopping = asyncio.Event()

    async def stream() -> None:
        n = 0
        while not stopping.is_set():
            await seed(
                engine,
                [
                    History(
                        f"s{n + i:06d}", interactions=[Interaction(NOW - (i % 10) * DAY, "login")]
                    )
                    for i in range(40)
                ],
                NOW,
            )
            n += 40
            await asyncio.sleep(0.02)

    try:

        async def evaluating() -> bool:
            return bool(await scalar(engine, "SELECT count(*) FROM segment_history") > 400)

        await eventually(evaluating, within_seconds=60, message="segmenters evaluating")
        load = asyncio.create_task(stream())
        await asyncio.sleep(1.0)
        async with pg_connection(engine) as conn:
            old = await store.version_in_force(conn)
        assert old is not None
        version = await activate(engine, STRICTER, old)
        after_activation = await scalar(engine, "SELECT max(id) FROM segment_history")
        # The follow loop polls every 2 s here: without the fence at commit, evaluations
        # under the old version would go on committing for up to that long.
        await asyncio.sleep(3.0)
        stopping.set()
        await load

        async def settled() -> bool:
            async with pg_connection(engine) as conn:
                due = await conn.fetchval(
                    "SELECT count(*) FROM segmentation_queue WHERE due_at <= $1", NOW
                )
                backfill = await store.get_backfill(conn, version)
            return due == 0 and backfill is not None and backfill.completed_at is not None

        await eventually(settled, within_seconds=120, message="queue drained")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait, 30)
    async with pg_connection(engine) as conn:
        late = await conn.fetch(
            "SELECT definition_version, count(*) AS n FROM segment_history WHERE id > $1"
            " GROUP BY 1",
            after_activation,
        )
        versions = await conn.fetch(
            "SELECT DISTINCT h.definition_version, d.version IS NOT NULL AS stored"
            " FROM segment_history h LEFT JOIN segment_definitions d"
            " ON d.version = h.definition_version"
        )
    counts = {r["definition_version"]: r["n"] for r in late}
    assert set(counts) == {version}, counts
    assert counts[version] > 0
    assert {r["definition_version"] for r in versions} == {old, version}
    assert all(r["stored"] for r in versions)
    # Customers evaluated under both still end in the new version's segments.
    stored = await segments(engine)
    assert (
        Counter(s for (c, d), s in stored.items() if d == "engagement" and c.startswith("c"))[
            "engaged"
        ]
        == 60
    )
