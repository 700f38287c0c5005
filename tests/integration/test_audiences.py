"""Audiences through the real segmenter, outbox, Kafka and API: entries and exits with their
history rows and change events, the customer read from the cache and from PostgreSQL, the
members listing and sizes, the change stream, and a removed audience's exits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.segmenter.worker import Evaluator
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.definitions.activation import activate_content
from shared.events import decode_segment_change
from shared.segment_cache import SegmentCache
from shared.segmentation import default_definitions, load_definitions
from shared.settings import ConnectionSettings
from tests.conftest import MakeTopic, eventually
from tests.integration.test_api_stream import FAST, EventReader
from tests.integration.test_api_support import api_process, bearer, make_key, running_api
from tests.integration.test_segmenter import read_changes
from tests.support.segmenter import History, evaluator, ruleset, scalar, seed, segments

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
AUDIENCES = """
audiences:
  recent_buyers:
    when: days_since_last_order < 20
    description: Ordered in the last 20 days.
  settled: lifecycle = active and not recent_buyers
"""
WITH_AUDIENCES = default_definitions().source + AUDIENCES
WITHOUT_SETTLED = default_definitions().source + AUDIENCES.split("  settled:")[0]


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


@pytest.fixture
async def client(
    settings: ConnectionSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    key = await make_key(engine, "segments:read")
    async with running_api(settings) as (_, http):
        http.headers.update(bearer(key))
        yield http


async def run_until_idle(ev: Evaluator) -> None:
    while await ev.evaluate_due():
        pass


async def history(
    engine: AsyncEngine, customer_id: str
) -> list[tuple[str, str | None, str | None, str, datetime]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT dimension, from_segment, to_segment, cause, evaluated_at"
                " FROM segment_history WHERE customer_id = :c AND dimension IN"
                " ('recent_buyers', 'settled') ORDER BY id"
            ),
            {"c": customer_id},
        )
        return [tuple(r) for r in rows]


async def test_a_customer_enters_and_exits_audiences_with_history_events_and_reads(
    engine: AsyncEngine,
    cache: SegmentCache,
    client: httpx.AsyncClient,
    settings: ConnectionSettings,
    make_topic: MakeTopic,
) -> None:
    # Two orders 40 and 15 days ago: lifecycle active, a recent buyer for 5 more days; then
    # no longer recent, and so settled, at the same instant, without an event.
    first, last = NOW - 40 * DAY, NOW - 15 * DAY
    await seed(
        engine,
        [
            History("buyer", orders=[(first, Decimal(30)), (last, Decimal(20))]),
            History("window", orders=[(NOW - 200 * DAY, Decimal(5))]),
        ],
        NOW,
    )
    rules = await ruleset(engine, definitions=load_definitions(WITH_AUDIENCES))
    clock = FixedClock(NOW)
    ev = evaluator(engine, cache, clock, rules)
    await run_until_idle(ev)

    stored = await segments(engine)
    assert stored[("buyer", "lifecycle")] == "active"
    assert stored[("buyer", "recent_buyers")] == "member"
    assert ("buyer", "settled") not in stored
    assert ("window", "recent_buyers") not in stored
    assert await history(engine, "buyer") == [("recent_buyers", None, "member", "event", NOW)]
    exit_at = last + 20 * DAY
    assert (
        await scalar(
            engine, "SELECT next_change_at FROM customer_evaluations WHERE customer_id = 'buyer'"
        )
        == exit_at
    )
    body = (await client.get("/v1/customers/buyer/segments")).json()
    assert body["source"] == "cache"
    assert set(body["segments"]) == {d.name for d in rules.definitions.dimensions}
    assert body["audiences"] == {
        "recent_buyers": {
            "since": NOW.isoformat().replace("+00:00", "Z"),
            "reason": "days_since_last_order=15 < 20",
            "definition_version": rules.version,
        }
    }

    # Time passes: the wake-up exits one audience and enters the other in one evaluation.
    clock.set(exit_at)
    await run_until_idle(ev)
    stored = await segments(engine)
    assert ("buyer", "recent_buyers") not in stored
    assert stored[("buyer", "settled")] == "member"
    assert await history(engine, "buyer") == [
        ("recent_buyers", None, "member", "event", NOW),
        ("recent_buyers", "member", None, "time", exit_at),
        ("settled", None, "member", "time", exit_at),
    ]
    async with engine.connect() as conn:
        reason = (
            await conn.execute(
                text(
                    "SELECT reason FROM segment_history WHERE customer_id = 'buyer'"
                    " AND dimension = 'recent_buyers' AND to_segment IS NULL"
                )
            )
        ).scalar_one()
    assert reason == "time passed; not (days_since_last_order=20 < 20)"

    # The customer read, from the cache and then from PostgreSQL, shows the same.
    cached = (await client.get("/v1/customers/buyer/segments")).json()
    await cache.delete("buyer")
    from_db = (await client.get("/v1/customers/buyer/segments")).json()
    assert (cached["source"], from_db["source"]) == ("cache", "database")
    assert cached["audiences"] == from_db["audiences"]
    assert set(from_db["audiences"]) == {"settled"}
    assert from_db["audiences"]["settled"]["reason"] == (
        "time passed; lifecycle=active = active and recent_buyers=false"
    )
    assert set(from_db["segments"]) == set(cached["segments"])
    assert "settled" not in from_db["segments"]

    # History, listing, sizes, transitions.
    entries = (await client.get("/v1/customers/buyer/history")).json()["items"]
    assert [(e["dimension"], e["to_segment"]) for e in entries[:2]] == [
        ("settled", "member"),
        ("recent_buyers", None),
    ]
    members = (await client.get("/v1/segments/settled/member/members")).json()
    assert [m["customer_id"] for m in members["items"]] == ["buyer"]
    assert (await client.get("/v1/segments/recent_buyers/member/members")).json()["items"] == []
    missing = await client.get("/v1/segments/settled/vip/members")
    assert (missing.status_code, missing.json()["error"]) == (404, "segment_not_found")
    listed = (await client.get("/v1/segments")).json()
    audiences = {a["name"]: a for a in listed["audiences"]}
    assert [a["name"] for a in listed["audiences"]] == ["recent_buyers", "settled"]
    assert audiences["settled"]["size"] == 1
    assert audiences["settled"]["dimensions"] == ["lifecycle"]
    assert audiences["settled"]["audiences"] == ["recent_buyers"]
    assert audiences["recent_buyers"]["description"] == "Ordered in the last 20 days."
    moves = (
        await client.get(
            "/v1/stats/transitions",
            params={"since": (NOW - DAY).isoformat(), "until": (exit_at + DAY).isoformat()},
        )
    ).json()["transitions"]
    assert {
        "dimension": "recent_buyers",
        "from_segment": "member",
        "to_segment": None,
        "count": 1,
    } in moves

    # Every change went through the outbox: the events carry the entries and exits.
    topic = await make_topic("changes", partitions=1)
    stopping = asyncio.Event()
    publisher = OutboxPublisher(
        engine, settings.kafka_bootstrap, topic, SegmenterMetrics(CollectorRegistry())
    )
    task = asyncio.create_task(publisher.run(stopping))
    try:
        expected = await scalar(engine, "SELECT count(*) FROM segment_history")
        records = await read_changes(settings, topic, expected)
    finally:
        stopping.set()
        await task
    events = [decode_segment_change(r.value) for r in records]
    audience_events = [
        (e.data.dimension, e.data.from_segment, e.data.to_segment, e.data.cause)
        for e in events
        if e.data.customer_id == "buyer" and e.data.dimension in ("recent_buyers", "settled")
    ]
    assert audience_events == [
        ("recent_buyers", None, "member", "event"),
        ("recent_buyers", "member", None, "time"),
        ("settled", None, "member", "time"),
    ]


async def test_a_removed_audience_exits_its_members_and_leaves_the_answers(
    engine: AsyncEngine, cache: SegmentCache, client: httpx.AsyncClient
) -> None:
    await seed(engine, [History("c1", orders=[(NOW - 40 * DAY, Decimal(30))])], NOW)
    rules = await ruleset(engine, definitions=load_definitions(WITH_AUDIENCES))
    await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
    assert (await segments(engine))[("c1", "settled")] == "member"

    async with pg_connection(engine) as conn, conn.transaction():
        stored = await activate_content(
            conn, WITHOUT_SETTLED, replaces=rules.version, actor="test", publish="none"
        )
        assert stored.changed_dimensions == ("settled",)

    # The removed audience is gone from every answer at once, before re-evaluation.
    async def settled_gone() -> bool:
        body = (await client.get("/v1/customers/c1/segments")).json()
        return "settled" not in body["audiences"]

    await eventually(settled_gone, within_seconds=5, message="removed audience hidden")
    gone = await client.get("/v1/segments/settled/member/members")
    assert (gone.status_code, gone.json()["error"]) == (404, "dimension_not_found")

    later = NOW + timedelta(seconds=5)
    outbox = await scalar(engine, "SELECT count(*) FROM segment_outbox")
    async with pg_connection(engine) as conn, conn.transaction():
        await repo.schedule(conn, [("c1", later)], "definitions")
    rules.switch(load_definitions(WITHOUT_SETTLED), stored.version, "none")
    await run_until_idle(evaluator(engine, cache, FixedClock(later), rules))
    assert ("c1", "settled") not in await segments(engine)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT from_segment, to_segment, cause, reason FROM segment_history"
                    " WHERE customer_id = 'c1' AND dimension = 'settled' ORDER BY id DESC LIMIT 1"
                )
            )
        ).one()
    assert tuple(row) == (
        "member",
        None,
        "definitions",
        "new segment definitions; audience 'settled' is not in definitions version"
        f" {stored.version}",
    )
    # Under the publish policy `none`: to the history only.
    assert await scalar(engine, "SELECT count(*) FROM segment_outbox") == outbox


async def test_audience_changes_are_streamed(
    engine: AsyncEngine, cache: SegmentCache, service_env: dict[str, str]
) -> None:
    await seed(engine, [History("s1", orders=[(NOW - 5 * DAY, Decimal(30))])], NOW)
    rules = await ruleset(engine, definitions=load_definitions(WITH_AUDIENCES))
    headers = bearer(await make_key(engine, "segments:read"))
    async with (
        api_process(service_env, FAST) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
        http.stream(
            "GET", "/v1/changes/stream", params={"dimension": "recent_buyers"}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        reader = EventReader(response)
        await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
        (event,) = await reader.next(1)
    change = decode_segment_change(event.data.encode())
    assert (change.data.customer_id, change.data.dimension) == ("s1", "recent_buyers")
    assert (change.data.from_segment, change.data.to_segment) == (None, "member")
