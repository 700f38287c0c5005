"""The project's own helpers against the real Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import create_engine
from shared.db.migrate import SchemaBehindError, current_revision, head_revision, require_current
from shared.kafka import make_consumer, make_producer
from shared.redis import make_redis
from shared.settings import ConnectionSettings
from tests.conftest import MakeTopic, unique

pytestmark = pytest.mark.integration


async def test_kafka_round_trip_through_transactional_producer(
    make_topic: MakeTopic, settings: ConnectionSettings, group_id: str
) -> None:
    topic = await make_topic("roundtrip", partitions=3)
    producer = make_producer(settings.kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(30):
                await producer.send(topic, value=f"v{i}".encode(), key=f"c{i % 5}".encode())
    finally:
        await producer.stop()
    consumer = make_consumer(settings.kafka_bootstrap, topic, group_id=group_id)
    await consumer.start()
    try:
        seen: dict[bytes, list[bytes]] = {}
        deadline = time.monotonic() + 30
        while sum(map(len, seen.values())) < 30 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    seen.setdefault(r.key, []).append(r.value)
    finally:
        await consumer.stop()
    assert sum(map(len, seen.values())) == 30
    # Same key, same partition: order per key is kept.
    assert seen[b"c0"] == [f"v{i}".encode() for i in range(0, 30, 5)]


async def test_aborted_transaction_is_invisible_to_read_committed(
    make_topic: MakeTopic, settings: ConnectionSettings, group_id: str
) -> None:
    topic = await make_topic("aborted")
    producer = make_producer(settings.kafka_bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send(topic, value=b"never")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, value=b"kept")
    finally:
        await producer.stop()
    consumer = make_consumer(settings.kafka_bootstrap, topic, group_id=group_id)
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while not values and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    assert values == [b"kept"]


async def test_migrations_reach_head_and_tables_exist(engine: AsyncEngine, db_schema: str) -> None:
    assert await current_revision(engine, db_schema) == head_revision()
    await require_current(engine, db_schema)
    async with engine.connect() as conn:
        tables = set(
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": db_schema}
                )
            ).scalars()
        )
    assert {"customer_aggregates", "ingest_offsets", "segmentation_queue"} <= tables


async def test_stale_schema_is_refused_with_the_command_to_run(
    stack_env: dict[str, str],
) -> None:
    schema = unique("empty")
    engine = create_engine(stack_env["STREAMSEG_DATABASE_URL"], schema)
    try:
        with pytest.raises(SchemaBehindError, match=r"python -m shared\.db upgrade"):
            await require_current(engine, schema)
    finally:
        await engine.dispose()


async def test_redis_round_trip(redis: Redis, redis_prefix: str) -> None:
    await redis.set(redis_prefix + "k", b"v", ex=60)
    assert await redis.get(redis_prefix + "k") == b"v"


async def test_redis_down_fails_fast() -> None:
    client = make_redis("redis://127.0.0.1:1/0", timeout_seconds=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)connect"):
        await client.ping()
    await client.aclose()
    assert time.monotonic() - started < 3
