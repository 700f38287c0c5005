"""The segmenter against real PostgreSQL, Redis and Kafka."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.erasure.repository import erase_customer
from services.segmenter import population
from services.segmenter import repository as repo
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.segmenter.worker import Evaluator, LeasePacer, evaluate_loop
from shared.clock import FixedClock
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import upgrade
from shared.definitions import repository as store
from shared.definitions.activation import activate_content
from shared.events import decode_segment_change
from shared.kafka import make_consumer
from shared.segment_cache import SegmentCache
from shared.segmentation import (
    OrderFact,
    PopulationStats,
    build_facts,
    evaluate,
    load_definitions,
)
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
    loop = asyncio.create_task(evaluate_loop(ev, stopping, LeasePacer(0.1, 500)))
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


LAPSING_AFTER_TWO_YEARS = """
dimensions:
  recency:
    segments:
      recent: days_since_last_order < 730 or not has_ordered
      lapsed: days_since_last_order >= 730
"""


async def test_a_two_year_lookback_fires_on_time_without_an_event(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    last_order = NOW - 10 * DAY
    await seed(engine, [History("loyal", orders=[(last_order, Decimal(30))])], NOW)
    rules = await ruleset(engine, definitions=load_definitions(LAPSING_AFTER_TWO_YEARS))
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
    assert (await segments(engine))[("loyal", "recency")] == "recent"
    lapses_at = last_order + 730 * DAY
    async with engine.connect() as conn:
        wake = (
            await conn.execute(
                text("SELECT due_at, cause FROM segmentation_queue WHERE customer_id = 'loyal'")
            )
        ).one()
    assert (wake.due_at, wake.cause) == (lapses_at, "time")

    two_years_later = NOW + 730 * DAY
    await run_until_idle(evaluator(engine, cache, FixedClock(two_years_later), rules))
    assert (await segments(engine))[("loyal", "recency")] == "lapsed"
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT cause, from_segment, evaluated_at FROM segment_history"
                    " WHERE customer_id = 'loyal' AND to_segment = 'lapsed'"
                )
            )
        ).one()
    assert (row.cause, row.from_segment, row.evaluated_at) == ("time", "recent", two_years_later)


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
    # A publisher of another schema in the same database holds its lock: it must not block
    # this schema's publisher.
    other = create_engine(settings.database_url, "public")
    try:
        async with pg_connection(other) as foreign:
            assert await repo.try_lock(foreign, "outbox", session=True)
            task = asyncio.create_task(up.run(stopping))
            try:

                async def drained() -> bool:
                    return bool(await scalar(engine, "SELECT count(*) FROM segment_outbox") == 0)

                await eventually(drained, within_seconds=30, message="outbox drained")
            finally:
                stopping.set()
                await task
                await repo.unlock(foreign, "outbox")
    finally:
        await other.dispose()
    records = await read_changes(settings, changes_topic, pending)
    assert len(records) == pending
    events = [decode_segment_change(r.value) for r in records]
    async with engine.connect() as conn:
        ids = set(
            (await conn.execute(text("SELECT change_id::text FROM segment_history"))).scalars()
        )
    assert {e.id for e in events} == ids
    assert all(r.key.decode() == e.subject for r, e in zip(records, events, strict=True))
    # Where and how a keyed send() would have put them: the key's partition, in change order.
    partitions = list(range(4))  # the changes_topic fixture's
    assert all(r.partition == DefaultPartitioner()(r.key, partitions, partitions) for r in records)
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in records)
    sequences: dict[tuple[str, str], list[int]] = {}
    for e in events:
        sequences.setdefault((e.subject, e.data.dimension), []).append(e.data.sequence)
    assert all(seq == sorted(seq) for seq in sequences.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_kill_9_loses_no_change_and_duplicates_none_after_dedup(
    engine: AsyncEngine,
    settings: ConnectionSettings,
    service_env: dict[str, str],
    changes_topic: str,
    tmp_path: Any,
) -> None:
    await seed(engine, random_histories(4000, 4, NOW), NOW)
    env = service_env | {
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes_topic,
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "STREAMSEG_SEGMENTER_CLOCK": f"fixed:{NOW.isoformat()}",
        "STREAMSEG_SEGMENTER_BATCH_SIZE": "40",
        "STREAMSEG_SEGMENTER_PUBLISH_BATCH_SIZE": "50",
        "STREAMSEG_LOG_JSON": "false",
    }
    rng = random.Random(4)
    procs: list[Any] = []

    def start() -> Any:
        proc = run_segmenter(env, tmp_path / f"segmenter-{len(procs)}.log")
        procs.append(proc)
        return proc

    async def settled() -> bool:
        due = await scalar(
            engine, "SELECT count(*) FROM segmentation_queue WHERE due_at <= :now", now=NOW
        )
        outbox = await scalar(engine, "SELECT count(*) FROM segment_outbox")
        return bool(due == 0 and outbox == 0)

    try:
        proc = start()
        for _ in range(4):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            assert proc.poll() is None, (tmp_path / f"segmenter-{len(procs) - 1}.log").read_text()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start()
        await eventually(settled, within_seconds=240, message="segmenter settled")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    async with engine.connect() as conn:
        history = (
            await conn.execute(
                text(
                    "SELECT change_id::text AS id, customer_id, dimension, from_segment,"
                    " to_segment, sequence FROM segment_history ORDER BY customer_id, sequence"
                )
            )
        ).all()
    # Each customer's changes form an unbroken chain per dimension ending at its segment.
    current = await segments(engine)
    chain: dict[tuple[str, str], str | None] = {}
    for h in history:
        assert chain.get((h.customer_id, h.dimension)) == h.from_segment, h
        chain[(h.customer_id, h.dimension)] = h.to_segment
    assert chain == current

    records = await read_changes(settings, changes_topic, len(history))
    first_seen: dict[str, Any] = {}
    for r in records:
        event = decode_segment_change(r.value)
        first_seen.setdefault(event.id, event)
    assert set(first_seen) == {h.id for h in history}  # all there, once after dedup by id
    per_customer: dict[str, list[int]] = {}
    for event in first_seen.values():
        per_customer.setdefault(event.subject, []).append(event.data.sequence)
    assert all(seq == sorted(seq) for seq in per_customer.values())


async def test_moved_cut_off_requeues_exactly_the_customers_it_crosses(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    # 100 spenders, customer s{i} spent 10*(i+1) in the last year.
    spenders = [
        History(f"s{i:03d}", orders=[(NOW - 10 * DAY, Decimal(10 * (i + 1)))]) for i in range(100)
    ]
    await seed(engine, spenders, NOW)
    rules = await ruleset(engine)
    assert await population.recompute(engine, rules, NOW) == 100  # first stats: everyone
    ev = evaluator(engine, cache, FixedClock(NOW), rules)
    await run_until_idle(ev)
    vip_cutoff = rules.population.cutoffs["vip_spend"]
    tiers = {c: s for (c, d), s in (await segments(engine)).items() if d == "value_tier"}
    assert {c for c, s in tiers.items() if s == "vip"} == {f"s{i:03d}" for i in range(95, 100)}

    # Ten new big spenders push the top 5% up: only customers between the old and the new
    # vip cut-off (and the other moved boundaries) are queued again.
    later = NOW + DAY
    await seed(
        engine,
        [History(f"t{i}", orders=[(later - DAY, Decimal(5000))]) for i in range(10)],
        later,
    )
    await run_until_idle(evaluator(engine, cache, FixedClock(later), rules))
    queued = await population.recompute(engine, rules, later)
    assert queued is not None
    assert rules.population.cutoffs["vip_spend"] > vip_cutoff
    async with engine.connect() as conn:
        requeued = set(
            (
                await conn.execute(
                    text("SELECT customer_id FROM segmentation_queue WHERE cause = 'population'")
                )
            ).scalars()
        )
    assert {"s099", "s095"} <= requeued  # former vips, now below the new cut-off
    await run_until_idle(evaluator(engine, cache, FixedClock(later), rules))
    async with engine.connect() as conn:
        moved = (
            await conn.execute(
                text(
                    "SELECT cause, reason FROM segment_history WHERE customer_id = 's099'"
                    " AND dimension = 'value_tier' AND from_segment = 'vip'"
                )
            )
        ).one()
    assert moved.cause == "population"
    assert moved.reason.startswith("cut-offs recomputed")
    tiers = {c: s for (c, d), s in (await segments(engine)).items() if d == "value_tier"}
    assert {c for c, s in tiers.items() if s == "vip"} == {f"t{i}" for i in range(10)}


async def test_event_time_clock_moves_with_the_ingested_watermark(
    engine: AsyncEngine, service_env: dict[str, str], changes_topic: str, tmp_path: Any
) -> None:
    last_order = NOW - 89 * DAY
    await seed(
        engine,
        [
            History(
                "replayed", orders=[(last_order - 100 * DAY, Decimal(5)), (last_order, Decimal(9))]
            )
        ],
        NOW,
    )

    async def set_watermark(at: datetime) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO ingest_offsets (topic, partition, max_event_at)"
                    " VALUES ('orders', 0, :at) ON CONFLICT (topic, partition)"
                    " DO UPDATE SET max_event_at = :at"
                ),
                {"at": at},
            )

    async def lifecycle_is(segment: str) -> bool:
        return (await segments(engine)).get(("replayed", "lifecycle")) == segment

    await set_watermark(NOW)
    proc = run_segmenter(_event_time_env(service_env, changes_topic), tmp_path / "segmenter.log")
    try:
        await eventually(lambda: lifecycle_is("active"), within_seconds=30, message="active")
        # The replay reaches a day past the 90-day mark: the customer is at risk then.
        await set_watermark(NOW + 2 * DAY)
        await eventually(lambda: lifecycle_is("at_risk"), within_seconds=10, message="at_risk")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    evaluated = await scalar(
        engine, "SELECT evaluated_at FROM customer_evaluations WHERE customer_id = 'replayed'"
    )
    assert evaluated == NOW + 2 * DAY  # event time, not the wall clock


async def test_event_time_clock_evaluates_nothing_before_the_first_watermark(
    engine: AsyncEngine, service_env: dict[str, str], changes_topic: str, tmp_path: Any
) -> None:
    # Facts seeded before ingest has recorded any event time: evaluated at the clock's
    # placeholder start, every order would lie in the future and no wake-up would follow.
    await seed(engine, [History("early", orders=[(NOW - 10 * DAY, Decimal(9))])], NOW)
    proc = run_segmenter(
        _event_time_env(service_env, changes_topic)
        | {"STREAMSEG_SEGMENTER_IDLE_POLL_SECONDS": "0.05"},
        tmp_path / "segmenter.log",
    )
    try:
        await eventually(
            lambda: _log_has(tmp_path / "segmenter.log", "segmenter_started"),
            within_seconds=30,
            message="segmenter started",
        )
        await asyncio.sleep(0.5)  # several idle polls of every evaluation loop
        assert await scalar(engine, "SELECT count(*) FROM customer_evaluations") == 0
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO ingest_offsets (topic, partition, max_event_at)"
                    " VALUES ('orders', 0, :at)"
                ),
                {"at": NOW},
            )
        await eventually(
            lambda: _lifecycle(engine, "early", "new"), within_seconds=15, message="new"
        )
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    evaluated = await scalar(
        engine, "SELECT evaluated_at FROM customer_evaluations WHERE customer_id = 'early'"
    )
    assert evaluated == NOW


async def _lifecycle(engine: AsyncEngine, customer_id: str, segment: str) -> bool:
    return (await segments(engine)).get((customer_id, "lifecycle")) == segment


async def _log_has(path: Any, text_: str) -> bool:
    return path.exists() and text_ in path.read_text(errors="replace")


def _event_time_env(service_env: dict[str, str], changes_topic: str) -> dict[str, str]:
    return service_env | {
        "STREAMSEG_SEGMENTER_CLOCK": "event-time",
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes_topic,
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
    }


async def test_a_file_that_differs_is_ignored_and_an_activation_reevaluates(
    engine: AsyncEngine,
    cache: SegmentCache,
    service_env: dict[str, str],
    changes_topic: str,
    tmp_path: Any,
) -> None:
    """The file seeds an empty database only: restarted with another file, the segmenter
    keeps the version in force and says so; an activation switches it without a restart."""
    # Last seen 5 days ago: engaged under the defaults (< 7 days), casual under a 3-day rule.
    await seed(engine, [History("e1", interactions=[Interaction(NOW - 5 * DAY, "login")])], NOW)
    rules = await ruleset(engine)
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
    assert (await segments(engine))[("e1", "engagement")] == "engaged"

    stricter = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
    stricter = stricter.replace(
        "days_since_last_interaction < 7", "days_since_last_interaction < 3"
    )
    stricter = stricter.replace(
        "days_since_last_interaction >= 7", "days_since_last_interaction >= 3"
    )
    path = tmp_path / "stricter.yaml"
    path.write_text(stricter)
    log_path = tmp_path / "segmenter.log"
    proc = run_segmenter(
        service_env
        | {
            "STREAMSEG_SEGMENTER_DEFINITIONS_PATH": str(path),
            "STREAMSEG_SEGMENTER_CLOCK": f"fixed:{NOW.isoformat()}",
            "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes_topic,
            "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        },
        log_path,
    )
    try:
        await eventually(
            lambda: _log_has(log_path, "segmenter_started"), message="segmenter started"
        )
        output = log_path.read_text()
        assert "definitions_file_ignored" in output
        assert f"differs from version {rules.version}" in output
        async with pg_connection(engine) as conn:
            assert await store.version_in_force(conn) == rules.version
        assert (await segments(engine))[("e1", "engagement")] == "engaged"

        async with pg_connection(engine) as conn, conn.transaction():
            activated = await activate_content(
                conn, stricter, replaces=rules.version, actor="test", note="3-day engagement"
            )
        assert activated.changed_dimensions == ("engagement",)

        async def casual() -> bool:
            return (await segments(engine)).get(("e1", "engagement")) == "casual"

        await eventually(casual, within_seconds=30, message="re-evaluated under new rules")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT cause, reason, definition_version FROM segment_history"
                    " WHERE customer_id = 'e1' AND to_segment = 'casual'"
                )
            )
        ).one()
    assert row.cause == "definitions"
    assert row.reason.startswith("new segment definitions")
    assert row.definition_version == activated.version


async def test_invalid_definitions_stop_the_segmenter_naming_the_rule(
    service_env: dict[str, str], tmp_path: Any
) -> None:
    broken = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
    broken = broken.replace("days_since_last_interaction < 7", "days_since_last_interactoin < 7")
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    proc = run_segmenter(
        service_env
        | {
            "STREAMSEG_SEGMENTER_DEFINITIONS_PATH": str(path),
            "STREAMSEG_SEGMENTER_OPS_PORT": "0",
            "STREAMSEG_LOG_JSON": "false",
        },
        tmp_path / "segmenter.log",
    )
    code = await asyncio.to_thread(proc.wait, 60)
    output = (tmp_path / "segmenter.log").read_text()
    assert code == 2, output
    assert "engagement/engaged" in output
    assert "days_since_last_interactoin" in output


async def test_history_ids_follow_commit_order_across_processes(engine: AsyncEngine) -> None:
    """A second writer cannot take history ids until the first has committed, so a reader
    that resumes after id N (the API's change stream) never misses a later commit."""
    row = repo.HistoryRow(
        change_id=str(uuid.uuid4()),
        customer_id="x",
        dimension="engagement",
        from_segment=None,
        to_segment="engaged",
        reason="r",
        cause="event",
        definition_version=1,
        caused_by_event_at=None,
        evaluated_at=NOW,
        sequence=1,
    )
    async with pg_connection(engine) as a, pg_connection(engine) as b:
        tx = a.transaction()
        await tx.start()
        await repo.lock_history(a)
        await repo.insert_changes(a, [row], [b"{}"])

        async def second_writer() -> None:
            async with b.transaction():
                await repo.lock_history(b)

        waiting = asyncio.create_task(second_writer())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await tx.commit()
        await asyncio.wait_for(waiting, 5)


async def _change_ids(engine: AsyncEngine, customer_id: str) -> dict[int, str]:
    """The customer's change ids by sequence, as recorded and as queued for Kafka."""
    async with pg_connection(engine) as conn:
        history = await conn.fetch(
            "SELECT sequence, change_id::text AS id FROM segment_history WHERE customer_id = $1",
            customer_id,
        )
        outbox = await conn.fetch(
            "SELECT change_id::text AS id, payload FROM segment_outbox WHERE customer_id = $1",
            customer_id,
        )
    # What goes to Kafka carries the id that was recorded with the change.
    assert {r["id"] for r in outbox} == {r["id"] for r in history}
    assert all(decode_segment_change(r["payload"]).id == r["id"] for r in outbox)
    return {r["sequence"]: r["id"] for r in history}


async def test_a_customer_erased_and_back_never_gets_an_earlier_change_id(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    rules = await ruleset(engine)
    ev = evaluator(engine, cache, FixedClock(NOW), rules)
    customer = History(
        "returns",
        orders=[(NOW - 10 * DAY, Decimal(40))],
        interactions=[Interaction(NOW - DAY, "login")],
    )
    await seed(engine, [customer], NOW)
    await run_until_idle(ev)
    first = await _change_ids(engine, "returns")
    assert first
    async with pg_connection(engine) as conn, conn.transaction():
        await erase_customer(conn, "returns")
    assert not await _change_ids(engine, "returns")

    # Back with the same events: the same changes again, numbered from 1 again, and a
    # consumer that deduplicates by id must still see every one of them.
    await seed(engine, [customer], NOW)
    await run_until_idle(ev)
    second = await _change_ids(engine, "returns")
    assert sorted(second) == sorted(first)
    assert not set(first.values()) & set(second.values())


class _RecomputesBeforeItCommits(Evaluator):
    """An evaluator during whose first batch, after it read its customers and evaluated them
    and before it commits, another process's cut-off recompute commits."""

    def __init__(self, *args: Any, recompute: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recompute = recompute

    async def _commit(self, *args: Any, **kwargs: Any) -> None:
        if self._recompute is not None:
            recompute, self._recompute = self._recompute, None
            await recompute()
        await super()._commit(*args, **kwargs)


@pytest.mark.parametrize("recomputed", ["before the read", "between the read and the commit"])
async def test_an_evaluation_with_old_cut_offs_cannot_settle_a_customer_they_moved(
    engine: AsyncEngine, cache: SegmentCache, settings: ConnectionSettings, recomputed: str
) -> None:
    spenders = [
        History(f"s{i:03d}", orders=[(NOW - 10 * DAY, Decimal(10 * (i + 1)))]) for i in range(100)
    ]
    await seed(engine, spenders, NOW)
    recomputing = await ruleset(engine)  # the process that recomputes the cut-offs
    assert await population.recompute(engine, recomputing, NOW) == 100
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), recomputing))
    assert (await segments(engine))[("s099", "value_tier")] == "vip"

    other_engine = create_engine(settings.database_url, settings.database_schema)
    try:
        # The other process has picked up those cut-offs, and will not refresh them (its
        # next refresh is seconds away) before it evaluates the customers they move.
        stale = await ruleset(other_engine)
        assert await population.refresh(other_engine, stale)
        later = NOW + DAY
        # Ten new big spenders: the vip cut-off moves above s099's spend.
        await seed(
            engine,
            [History(f"t{i}", orders=[(later - DAY, Decimal(5000))]) for i in range(10)],
            later,
        )

        async def recompute() -> None:
            assert await population.recompute(engine, recomputing, later)

        if recomputed == "before the read":
            await recompute()
        other = _RecomputesBeforeItCommits(
            other_engine,
            cache,
            FixedClock(later),
            SegmenterMetrics(CollectorRegistry()),
            stale,
            recompute=recompute if recomputed != "before the read" else None,
        )
        await run_until_idle(other)
    finally:
        await other_engine.dispose()
    tiers = {c: s for (c, d), s in (await segments(engine)).items() if d == "value_tier"}
    # The tiers the new cut-offs give: only the new big spenders are vips.
    assert tiers["s099"] != "vip"
    assert {c for c, s in tiers.items() if s == "vip"} == {f"t{i}" for i in range(10)}
    assert stale.population_id == recomputing.population_id  # it caught up on the way
    due = "SELECT count(*) FROM segmentation_queue WHERE due_at <= :t"
    assert await scalar(engine, due, t=later) == 0
