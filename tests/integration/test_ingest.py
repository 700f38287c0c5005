"""Ingest against real Kafka and PostgreSQL, compared with the independent checker."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from services.ingest.settings import IngestSettings
from shared.events import OrderPlaced, PageView, encode_event
from shared.kafka import (
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    dlq_topic,
)
from shared.workload import Workload
from tests.conftest import eventually, free_port
from tests.support.checker import differences, expected_aggregates
from tests.support.ingest import (
    Harness,
    as_records,
    produce,
    read_aggregates,
    read_dead_letters,
)

pytestmark = pytest.mark.integration

RATES = IngestSettings().currency_rates


def workload(seed: int, customers: int = 300) -> Workload:
    end = datetime.now(UTC) - timedelta(minutes=1)
    return Workload(seed=seed, customers=customers, start=end - timedelta(days=400), end=end)


async def test_aggregates_match_the_checker(harness: Harness) -> None:
    events = list(workload(1).events(3000))
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(events, harness.topics))
    await harness.wait_caught_up(produced)
    await harness.assert_exact(events)
    async with harness.engine.connect() as conn:
        queued = (await conn.execute(text("SELECT count(*) FROM segmentation_queue"))).scalar()
    assert queued == len({e.customer_id for e in events})
    async with harness.engine.connect() as conn:
        watermark = (
            await conn.execute(text("SELECT max(max_event_at) FROM ingest_offsets"))
        ).scalar_one()
    assert watermark == max(e.occurred_at for e in events)
    # Kafka's own committed offsets follow (in the background) for standard lag tools.
    admin = AIOKafkaAdminClient(bootstrap_servers=harness.bootstrap)
    await admin.start()
    try:

        async def reported() -> bool:
            group = harness.env["STREAMSEG_INGEST_GROUP_ID"]
            offsets = await admin.list_consumer_group_offsets(group)
            return {(tp.topic, tp.partition): m.offset for tp, m in offsets.items()} == (
                produced.ends
            )

        await eventually(reported, message="Kafka committed offsets reach the end")
    finally:
        await admin.close()


async def test_an_event_time_replay_of_an_old_stream_is_exact_as_of_its_own_time(
    harness: Harness,
) -> None:
    end = datetime.now(UTC) - timedelta(days=3 * 365)
    old = Workload(seed=9, customers=200, start=end - timedelta(days=400), end=end)
    events = list(old.events(2000))
    harness.env["STREAMSEG_INGEST_CLOCK"] = "event-time"
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(events, harness.topics))
    await harness.wait_caught_up(produced)
    # As of the replay's own latest event: nothing dead-lettered as "from the future", and
    # the rolling interaction windows kept (they are years older than the wall clock).
    latest = max(e.occurred_at for e in events)
    expected = expected_aggregates(events, RATES, latest)
    problems = differences(expected, await read_aggregates(harness.engine, latest))
    assert not problems, f"{len(problems)} differences, first: {problems[:10]}"
    async with harness.engine.connect() as conn:
        first_due, last_due = (
            await conn.execute(text("SELECT min(due_at), max(due_at) FROM segmentation_queue"))
        ).one()
    # Queued in event time, so that a segmenter on the event-time clock finds them due.
    assert min(e.occurred_at for e in events) <= first_due <= last_due <= latest


async def test_duplicates_and_reordering_change_nothing(harness: Harness) -> None:
    events = list(workload(2).events(3000))
    harness.worker()
    produced = await produce(
        harness.bootstrap, as_records(events, harness.topics, duplicate=True, seed=2)
    )
    await harness.wait_caught_up(produced)
    await harness.assert_exact(events)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_exact_through_repeated_kill_9(harness: Harness) -> None:
    events = list(workload(3, customers=2000).events(20_000))
    records = as_records(events, harness.topics)
    rng = random.Random(3)
    worker = harness.worker()
    producing = asyncio.create_task(produce(harness.bootstrap, records, rate_per_second=1500))
    kills = 0
    while not producing.done() or kills < 5:
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        worker.kill9()
        kills += 1
        worker = harness.worker()
    produced = await producing
    await harness.wait_caught_up(produced, within_seconds=180)
    assert kills >= 5
    await harness.assert_exact(events)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_two_workers_with_one_leaving_and_rejoining(harness: Harness) -> None:
    events = list(workload(4, customers=1000).events(12_000))
    records = as_records(events, harness.topics)
    first = harness.worker()
    second = harness.worker()
    producing = asyncio.create_task(produce(harness.bootstrap, records, rate_per_second=1500))

    async def both_own_partitions() -> bool:
        async with harness.engine.connect() as conn:
            owners = await conn.execute(text("SELECT count(DISTINCT owner) FROM ingest_offsets"))
            return bool(owners.scalar_one() == 2)

    await eventually(both_own_partitions, within_seconds=60, message="both workers own partitions")
    assert await second.terminate() == 0  # leaves the group cleanly mid-stream
    await asyncio.sleep(2)
    harness.worker()  # and a worker rejoins
    produced = await producing
    await harness.wait_caught_up(produced, within_seconds=180)
    assert first.alive()
    await harness.assert_exact(events)


async def test_bad_records_go_to_the_dead_letter_topic(harness: Harness) -> None:
    good = list(workload(5).events(1000))
    at = datetime.now(UTC) - timedelta(hours=1)
    bad_values: dict[str, bytes] = {
        "undecodable": b"\xff\xfe not json",
        "schema_violation": b'{"type":"page_view","event_id":"x1","customer_id":"c1"}',
        "oversized": b'{"type":"page_view","pad":"' + b"x" * 70_000 + b'"}',
        "unknown_event_type": (
            b'{"type":"teleport","event_id":"x2","customer_id":"c1","occurred_at":"'
            + at.isoformat().encode()
            + b'"}'
        ),
        "unknown_currency": encode_event(
            OrderPlaced(
                event_id="x3",
                customer_id="c1",
                order_id="o1",
                occurred_at=at,
                amount=Decimal("10"),
                currency="XYZ",
            )
        ),
        "occurred_at_out_of_range": encode_event(
            PageView(event_id="x4", customer_id="c1", occurred_at=at + timedelta(days=30))
        ),
    }
    records = as_records(good, harness.topics)
    rng = random.Random(5)
    for reason, value in bad_values.items():
        topic = (
            harness.topics.orders if reason == "unknown_currency" else harness.topics.interactions
        )
        records.insert(rng.randrange(len(records)), (topic, reason.encode(), value))
    port = free_port()
    harness.env["STREAMSEG_INGEST_OPS_PORT"] = str(port)
    harness.worker()
    produced = await produce(harness.bootstrap, records)
    await harness.wait_caught_up(produced)
    await harness.assert_exact(good)
    async with httpx.AsyncClient(timeout=5) as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for reason in bad_values:
        assert f'reason="{reason}"' in metrics, reason

    letters = await read_dead_letters(
        harness.bootstrap,
        [dlq_topic(harness.topics.orders), dlq_topic(harness.topics.interactions)],
        len(bad_values),
    )
    found = {key.decode(): (value, headers) for key, value, headers in letters if key}
    assert set(found) == set(bad_values)
    for reason, (value, headers) in found.items():
        assert value == bad_values[reason], reason
        assert headers[HEADER_REASON].decode() == reason
        assert headers[HEADER_SOURCE_TOPIC].decode() in (
            harness.topics.orders,
            harness.topics.interactions,
        )
        assert int(headers[HEADER_SOURCE_PARTITION]) >= 0
        assert int(headers[HEADER_SOURCE_OFFSET]) >= 0


async def test_liveness_fails_while_stalled_with_lag_and_recovers(harness: Harness) -> None:
    port = free_port()
    harness.env |= {"STREAMSEG_INGEST_OPS_PORT": str(port), "STREAMSEG_INGEST_STALL_SECONDS": "2"}
    events = list(workload(6).events(500))
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(events[:100], harness.topics))
    await harness.wait_caught_up(produced)
    url = f"http://127.0.0.1:{port}/healthz"
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(url)).status_code == 200
        # Hold every offset row: the worker's next batch cannot commit, so it makes no
        # progress while records keep arriving.
        async with harness.engine.connect() as conn, conn.begin():
            await conn.execute(text("SELECT * FROM ingest_offsets FOR UPDATE"))
            more = await produce(harness.bootstrap, as_records(events[100:], harness.topics))

            async def failing() -> bool:
                r = await client.get(url)
                return r.status_code == 503 and r.json()["stalled"] is True

            await eventually(failing, within_seconds=20, message="liveness failing")
        await harness.wait_caught_up(more)

        async def healthy() -> bool:
            return (await client.get(url)).status_code == 200

        await eventually(healthy, within_seconds=20, message="liveness recovered")
    await harness.assert_exact(events)
