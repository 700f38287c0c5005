"""POST /v1/events: batches through real Kafka and ingest; each event checked as ingest
checks records, the rejected ones named by index and reason; the limits; scopes; and a
Kafka that stops answering (a private broker, SIGSTOPped), after which the same batch sent
again is counted once."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.events import Event, encode_event
from shared.kafka import TopicSpec, dlq_topic, ensure_topics
from shared.settings import ConnectionSettings
from shared.workload import Workload
from tests.conftest import eventually, free_port, unique
from tests.integration.test_api_support import audit_rows, bearer, make_key, running_api
from tests.support.ingest import Harness, Produced, Topics
from tests.support.instances import private_stack

pytestmark = pytest.mark.integration

PARTITIONS = 4


def workload_events(n: int, seed: int, prefix: str = "c") -> list[Event]:
    end = datetime.now(UTC) - timedelta(minutes=1)
    work = Workload(
        seed=seed, customers=40, start=end - timedelta(days=120), end=end, customer_prefix=prefix
    )
    return list(work.events(n))


def traits_event(customer_id: str, event_id: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "customer_traits",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "traits": traits,
    }


def api_topics(topics: Topics) -> dict[str, str]:
    return {
        "orders_topic": topics.orders,
        "interactions_topic": topics.interactions,
        "customers_topic": topics.customers,
    }


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(parts)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def records_of(bootstrap: str, topics: Sequence[str]) -> list[tuple[str, int, bytes, bytes]]:
    """(topic, partition, key, value) of every record now on `topics`."""
    ends = await end_offsets(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[str, int, bytes, bytes]] = []
    try:
        parts = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        consumer.assign(parts)
        while len(out) < sum(ends.values()):
            for tp, batch in (await consumer.getmany(*parts, timeout_ms=1000)).items():
                out += [(tp.topic, tp.partition, r.key or b"", r.value or b"") for r in batch]
    finally:
        await consumer.stop()
    return out


async def wait_ingested(harness: Harness) -> None:
    """Until ingest has stored offsets up to the ends of the input topics."""
    ends = await end_offsets(harness.bootstrap, harness.topics.all())
    await harness.wait_caught_up(Produced({k: v for k, v in ends.items() if v > 0}), 60)


async def stored_traits(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT customer_id, traits::text FROM customer_traits"))
        return {r[0]: json.loads(r[1]) for r in rows}


@pytest.fixture
async def api(settings: ConnectionSettings, harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, **api_topics(harness.topics)) as (app, client):
        assert app.state.resources.kafka.is_connected
        yield client


async def test_a_mixed_batch_reaches_ingest_and_the_invalid_events_are_named(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    harness.worker()
    writer = bearer(await make_key(harness.engine, "events:write"))
    valid = workload_events(300, seed=1)
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    order = orjson.loads(encode_event(next(e for e in valid if e.type == "order_placed")))
    invalid: dict[int, tuple[Any, str, str]] = {
        3: ({**order, "event_id": "bad-amount", "amount": "-1"}, "schema_violation", "$.amount"),
        50: (
            {**order, "event_id": "bad-currency", "currency": "XYZ"},
            "unknown_currency",
            "$.currency",
        ),
        77: (
            {**order, "event_id": "late", "occurred_at": future},
            "occurred_at_out_of_range",
            "$.occurred_at",
        ),
        120: ({**order, "event_id": "what", "type": "order_lost"}, "unknown_event_type", "$.type"),
        121: (
            {**order, "event_id": "v2", "schema_version": 2},
            "unsupported_schema_version",
            "$.schema_version",
        ),
        200: (42, "schema_violation", "$"),
        201: (traits_event("t-1", "uk", country="UK"), "schema_violation", "$.traits.country"),
        202: (
            {k: v for k, v in order.items() if k != "order_id"} | {"event_id": "no-order"},
            "schema_violation",
            "$.order_id",
        ),
    }
    # Customers with events too: the checker knows no customer without them.
    t1, t2 = sorted({e.customer_id for e in valid})[:2]
    good_traits = [traits_event(t1, "crm-1", country="DE"), traits_event(t2, "crm-2")]
    good_traits[1]["traits"] = {"city": "Wien", "custom": {"tier": "gold"}}
    good: list[Any] = [orjson.loads(encode_event(e)) for e in valid] + good_traits
    items = list(good)
    for index in sorted(invalid):
        items.insert(index, invalid[index][0])
    assert len(items) == 310

    r = await api.post("/v1/events", headers=writer, json={"events": items})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (302, 8)
    got = {x["index"]: (x["reason"], x["field"]) for x in body["rejections"]}
    assert sorted(got) == sorted(invalid)
    for index, (_, reason, field) in invalid.items():
        assert got[index][0] == reason, (index, body["rejections"])
        assert got[index][1] == field, (index, body["rejections"])
    assert next(x for x in body["rejections"] if x["index"] == 3)["event_id"] == "bad-amount"
    assert next(x for x in body["rejections"] if x["index"] == 200)["event_id"] is None

    # On ingest's topics, keyed by customer and partitioned by the key as a keyed send
    # does (murmur2, as Kafka's Java client), each the bytes it was sent as.
    produced = await records_of(harness.bootstrap, harness.topics.all())
    assert len(produced) == 302
    by_id = {orjson.loads(v)["event_id"]: (p, k, orjson.loads(v)) for _, p, k, v in produced}
    assert len(by_id) == 302
    for item in good:
        partition, key, value = by_id[item["event_id"]]
        assert key == item["customer_id"].encode()
        assert partition == (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        assert value == item
    assert {t for t, _, _, _ in produced} == set(harness.topics.all())

    await wait_ingested(harness)
    await harness.assert_exact(valid)
    traits = await stored_traits(harness.engine)
    assert traits == {t1: {"country": "DE"}, t2: {"city": "Wien", "tier": "gold"}}
    # Nothing accepted was refused by ingest.
    dead = await end_offsets(harness.bootstrap, [dlq_topic(t) for t in harness.topics.all()])
    assert sum(dead.values()) == 0

    async def audited() -> bool:
        rows = await audit_rows(harness.engine, "events.write")
        return len(rows) == 1 and rows[0]["detail"]["accepted"] == 302

    await eventually(audited, message="the batch audited")
    detail = (await audit_rows(harness.engine, "events.write"))[0]["detail"]
    assert detail["rejected"] == 8
    assert detail["types"]["customer_traits"] == 2


async def test_limits_scopes_and_a_kafka_that_is_not_there(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    writer = bearer(await make_key(engine, "events:write"))
    reader = bearer(await make_key(engine, "segments:read", "traits:write"))
    one = [orjson.loads(encode_event(e)) for e in workload_events(1, seed=2)]
    unreachable = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with running_api(unreachable) as (app, client):
        assert not app.state.resources.kafka.is_connected
        denied = await client.post("/v1/events", headers=reader, json={"events": one})
        assert denied.status_code == 403
        assert "events:write" in denied.json()["detail"]
        assert (await client.post("/v1/events", json={"events": one})).status_code == 401

        r = await client.post("/v1/events", headers=writer, json={"events": one})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "kafka_unavailable"
        assert "not accepted" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        # Nothing valid: nothing to produce, so the answer needs no Kafka.
        r = await client.post("/v1/events", headers=writer, json={"events": [{"type": "x"}]})
        assert r.status_code == 202, r.text
        assert r.json()["rejected"] == 1

        many = one * 1001
        r = await client.post("/v1/events", headers=writer, json={"events": many})
        assert r.status_code == 422, r.text
        assert "at most 1000 events" in r.json()["detail"]
        assert "1001" in r.json()["detail"]
        assert r.json()["problems"][0]["location"] == "body.events"

        # Over 1 MiB: by Content-Length, and streamed without one.
        pad = {**one[0], "properties": {f"p{i}": "x" * 1000 for i in range(50)}}
        huge = orjson.dumps({"events": [pad] * 21})
        assert 1024 * 1024 < len(huge) < 1100 * 1024
        r = await client.post("/v1/events", headers=writer, content=huge)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "body_too_large"
        assert "1048576 bytes" in r.json()["detail"]
        chunks = (huge[i : i + 65536] for i in range(0, len(huge), 65536))

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        r = await client.post("/v1/events", headers=writer, content=stream())
        assert r.status_code == 413, r.text
        # Under 1 MiB, far over the other routes' 64 KiB: read, and each event judged.
        big = orjson.dumps({"events": [pad] * 19})
        assert len(big) > 900 * 1024
        r = await client.post("/v1/events", headers=writer, content=big)
        assert r.status_code == 503, r.text  # valid, and Kafka is not there

        for bad, words in [
            (b"{not json", "not JSON"),
            (b'{"events": []}', "at least one event"),
            (b'{"events": 5}', "array"),
            (b"{}", "events"),
            (b'{"events": [], "more": 1}', "more"),
        ]:
            r = await client.post("/v1/events", headers=writer, content=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"] == "validation_error"
            assert words in r.json()["detail"], (bad, r.text)


@pytest.mark.timeout(240)
async def test_a_paused_kafka_is_503_and_the_batch_sent_again_is_counted_once(
    stack_env: dict[str, str], settings: ConnectionSettings, engine: AsyncEngine, tmp_path: Path
) -> None:
    with private_stack(stack_env, tmp_path / "kafka", "kafka") as stack:
        bootstrap = stack.env["STREAMSEG_KAFKA_BOOTSTRAP"]
        topics = Topics(unique("orders"), unique("interactions"), unique("customers"))
        await ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS) for t in topics.all()])
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")} | {
            "STREAMSEG_DATABASE_URL": settings.database_url,
            "STREAMSEG_DATABASE_SCHEMA": settings.database_schema,
            "STREAMSEG_REDIS_URL": settings.redis_url,
            "STREAMSEG_REDIS_KEY_PREFIX": settings.redis_key_prefix,
            "STREAMSEG_KAFKA_BOOTSTRAP": bootstrap,
            "STREAMSEG_INGEST_ORDERS_TOPIC": topics.orders,
            "STREAMSEG_INGEST_INTERACTIONS_TOPIC": topics.interactions,
            "STREAMSEG_INGEST_CUSTOMERS_TOPIC": topics.customers,
            "STREAMSEG_INGEST_GROUP_ID": unique("g"),
            "STREAMSEG_INGEST_OPS_PORT": "0",
            "STREAMSEG_LOG_JSON": "false",
        }
        harness = Harness(topics, env, bootstrap, engine, tmp_path, [])
        writer = bearer(await make_key(engine, "events:write"))
        first, second = workload_events(400, seed=3), workload_events(400, seed=4, prefix="d")
        private = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        try:
            harness.worker()
            async with running_api(
                private, events_produce_timeout_ms=1000, **api_topics(topics)
            ) as (_, client):
                body = orjson.dumps({"events": [orjson.loads(encode_event(e)) for e in first]})
                again = orjson.dumps({"events": [orjson.loads(encode_event(e)) for e in second]})
                r = await client.post("/v1/events", headers=writer, content=body)
                assert r.status_code == 202, r.text

                stack.pause("kafka")
                try:
                    for _ in range(2):
                        r = await client.post("/v1/events", headers=writer, content=again)
                        assert r.status_code == 503, r.text
                        assert r.headers["retry-after"] == "1"
                        assert r.json()["error"] == "kafka_unavailable"
                        assert "did not acknowledge within 1 s" in r.json()["detail"]
                finally:
                    stack.resume("kafka")

                async def accepted() -> bool:
                    r = await client.post("/v1/events", headers=writer, content=again)
                    return r.status_code == 202 and r.json()["accepted"] == len(second)

                await eventually(accepted, within_seconds=60, message="the batch accepted")

            # The attempts that answered 503 left their records with the producer, which
            # delivered them once the broker answered again: Kafka holds several copies of
            # the second batch (three, as a rule), and ingest counts each event once.
            on_kafka = sum((await end_offsets(bootstrap, topics.all())).values())
            assert on_kafka > len(first) + len(second)
            await wait_ingested(harness)
            await harness.assert_exact(first + second)
            async with engine.connect() as conn:
                applied = await conn.execute(text("SELECT count(*) FROM processed_events"))
                assert applied.scalar_one() == len(first) + len(second)
        finally:
            for w in harness.workers:
                w.ensure_dead()
