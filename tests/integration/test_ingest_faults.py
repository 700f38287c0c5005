"""Ingest exact under the faults real deployments meet, compared with the independent checker:
producers that do not key by customer, orders placed twice, batches PostgreSQL lost."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.batch import Part, PreparedBatch, build_changes
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from services.ingest.worker import IngestWorker
from shared.clock import SystemClock
from shared.db.engine import create_engine
from shared.db.migrate import upgrade
from shared.events import Event, OrderPlaced, OrderRefunded, encode_event
from shared.kafka import HEADER_REASON, HEADER_REFERENCE, delete_topics, dlq_topic
from shared.workload import Workload
from tests.conftest import MakeTopic, eventually, free_port, unique
from tests.support.checker import expected_aggregates
from tests.support.ingest import (
    Harness,
    IngestProcess,
    Produced,
    Topics,
    as_records,
    produce,
    read_aggregates,
    read_dead_letters,
    stored_offsets,
)
from tests.support.instances import PrivateStack, private_stack

pytestmark = pytest.mark.integration

RATES = IngestSettings().currency_rates


def spread(
    events: list[Event], harness: Harness, partitions: int, seed: int
) -> list[tuple[str, bytes | None, bytes]]:
    """Records keyed by event id, not customer: one customer's events land on every
    partition, as with round-robin producers, order-id keys or added partitions."""
    rng = random.Random(seed)
    records = as_records(events, harness.topics)
    # A key per record chosen so each partition gets a share of each customer.
    return [(topic, f"k{rng.randrange(partitions * 97)}".encode(), v) for topic, _, v in records]


def recent_events(*, seed: int, customers: int, days: int, count: int) -> list[Event]:
    """`count` realistic events over the last `days`, up to a minute ago."""
    end = datetime.now(UTC) - timedelta(minutes=1)
    workload = Workload(seed=seed, customers=customers, start=end - timedelta(days=days), end=end)
    return list(workload.events(count))


def orders_only(seed: int, customers: int, count: int) -> list[Event]:
    end = datetime.now(UTC) - timedelta(minutes=1)
    workload = Workload(seed=seed, customers=customers, start=end - timedelta(days=300), end=end)
    return [e for e in workload.events(count * 3) if e.type.startswith("order_")][:count]


@asynccontextmanager
async def private_pg_harness(
    stack_env: dict[str, str],
    make_topic: MakeTopic,
    tmp_path: Path,
    partitions: int,
    settings: dict[str, str],
) -> AsyncIterator[tuple[PrivateStack, Harness]]:
    """A harness whose PostgreSQL is a private instance the test may crash, stop or pause;
    Kafka is the shared one. Workers, topics and the instance go when the test ends."""
    bootstrap = stack_env["STREAMSEG_KAFKA_BOOTSTRAP"]
    with private_stack(stack_env, tmp_path / "pg", "postgres") as pg:
        schema = unique("t")
        engine = create_engine(pg.env["STREAMSEG_DATABASE_URL"], schema)
        workers: list[IngestProcess] = []
        topics = Topics(
            await make_topic("orders", partitions),
            await make_topic("interactions", partitions),
            await make_topic("customers", partitions),
        )
        try:
            await upgrade(engine, schema)
            env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")} | {
                "STREAMSEG_DATABASE_URL": pg.env["STREAMSEG_DATABASE_URL"],
                "STREAMSEG_REDIS_URL": pg.env["STREAMSEG_REDIS_URL"],
                "STREAMSEG_KAFKA_BOOTSTRAP": bootstrap,
                "STREAMSEG_DATABASE_SCHEMA": schema,
                "STREAMSEG_INGEST_ORDERS_TOPIC": topics.orders,
                "STREAMSEG_INGEST_INTERACTIONS_TOPIC": topics.interactions,
                "STREAMSEG_INGEST_CUSTOMERS_TOPIC": topics.customers,
                "STREAMSEG_INGEST_GROUP_ID": unique("g"),
                "STREAMSEG_INGEST_OPS_PORT": "0",
                "STREAMSEG_LOG_JSON": "false",
                **settings,
            }
            yield pg, Harness(topics, env, bootstrap, engine, tmp_path, workers)
        finally:
            for w in workers:
                w.ensure_dead()
            await delete_topics(bootstrap, [dlq_topic(t) for t in topics.all()])
            await engine.dispose()


@pytest.mark.timeout(300)
async def test_two_workers_stay_exact_when_a_customers_orders_span_partitions(
    harness: Harness,
) -> None:
    events = orders_only(seed=21, customers=200, count=8000)
    harness.worker()
    harness.worker()
    await harness.wait_owners(2)
    # Paced, so that both workers commit batches touching the same customers at once.
    produced = await produce(
        harness.bootstrap, spread(events, harness, 4, seed=21), rate_per_second=2000
    )
    await harness.wait_caught_up(produced, within_seconds=180)
    await harness.assert_exact(events)


async def test_an_order_placed_twice_keeps_its_earliest_placement(harness: Harness) -> None:
    at = datetime.now(UTC) - timedelta(days=3)

    def placed(event_id: str, minutes: int, amount: str) -> OrderPlaced:
        return OrderPlaced(
            event_id=event_id,
            customer_id="c-twice",
            occurred_at=at + timedelta(minutes=minutes),
            order_id="o-1",
            amount=Decimal(amount),
            currency="EUR",
        )

    # The latest placement arrives first, in its own batch; then the earliest, then a tie
    # with the earliest whose event id is larger (it must lose to the smaller id).
    first_batch = [placed("e-late", 30, "90")]
    later = [placed("e-early-b", 0, "70"), placed("e-early-a", 0, "50")]
    harness.worker()
    topic = harness.topics.orders
    produced = await produce(
        harness.bootstrap, [(topic, b"c-twice", encode_event(e)) for e in first_batch]
    )
    await harness.wait_caught_up(produced)
    for e in later:
        produced = await produce(
            harness.bootstrap, [(topic, b"c-twice", encode_event(e))], produced
        )
        await harness.wait_caught_up(produced)
    async with harness.engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT placed_at, amount FROM orders WHERE order_id = 'o-1'"))
        ).one()
    assert (row.placed_at, row.amount) == (at, Decimal("50"))
    await harness.assert_exact([*first_batch, *later])


@pytest.mark.timeout(300)
async def test_batches_that_postgresql_lost_are_read_again(harness: Harness) -> None:
    """A PostgreSQL crash with `synchronous_commit = off` can lose the last acknowledged
    batches, their effects and offsets alike, while the worker lives on. Here the loss is
    made exact: every ingest table is emptied and the offsets go back to the start, as if
    all batches so far had been lost; the worker must notice on its next batch and read
    them again rather than move the offsets past them."""
    events = recent_events(seed=22, customers=150, days=200, count=3000)
    first, second = events[:2000], events[2000:]
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(first, harness.topics))
    await harness.wait_caught_up(produced)
    async with harness.engine.begin() as conn:
        for table in ("orders", "interactions", "customer_aggregates", "processed_events"):
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - constants
        await conn.execute(text("UPDATE ingest_offsets SET next_offset = 0"))
    # With no new record, the worker finds the loss by comparing offsets on its own.
    await harness.wait_caught_up(produced)
    await harness.assert_exact(first)
    produced = await produce(harness.bootstrap, as_records(second, harness.topics), produced)
    await harness.wait_caught_up(produced)
    await harness.assert_exact(events)


@pytest.mark.timeout(300)
async def test_a_claim_that_fails_is_retried_instead_of_leaving_partitions_unconsumed(
    harness: Harness,
) -> None:
    """The claim's connection dies while it waits (a backend killed, a failover): aiokafka
    swallows what the rebalance listener raises, so without a retry the partitions stay
    assigned to a worker that never consumes them, and nothing says so."""
    events = recent_events(seed=23, customers=100, days=100, count=1500)
    harness.worker()
    await harness.wait_owners(1)
    async with harness.engine.connect() as locker, harness.engine.connect() as killer:
        await locker.begin()
        await locker.execute(text("SELECT * FROM ingest_offsets FOR UPDATE"))
        locker_pid = (await locker.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        harness.worker()  # a rebalance: both workers claim, and wait for our row locks

        async def claims_blocked() -> bool:
            rows = await killer.execute(
                text("SELECT pid FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid))"),
                {"p": locker_pid},
            )
            blocked = list(rows.scalars())
            for pid in blocked:
                await killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await killer.commit()
            return bool(blocked)

        await eventually(claims_blocked, within_seconds=60, message="a claim waits for our lock")
        await locker.rollback()
    produced = await produce(harness.bootstrap, as_records(events, harness.topics))
    await harness.wait_caught_up(produced, within_seconds=120)
    await harness.assert_exact(events)
    assert all(w.alive() for w in harness.workers)


@pytest.mark.timeout(400)
async def test_exact_through_postgresql_crashes_and_restarts_while_the_worker_lives(
    stack_env: dict[str, str], make_topic: MakeTopic, tmp_path: Path
) -> None:
    """PostgreSQL itself fails under a live worker: a backend killed (the postmaster then
    resets every backend and runs crash recovery, losing commits not yet flushed) and an
    immediate shutdown and restart. The worker must ride through it (no exit), read again
    whatever was lost, and end exact."""
    events = recent_events(seed=24, customers=300, days=300, count=9000)
    settings = {"STREAMSEG_INGEST_MAX_BATCH_RECORDS": "300"}
    async with private_pg_harness(stack_env, make_topic, tmp_path, 4, settings) as (pg, harness):
        worker = harness.worker()
        records = as_records(events, harness.topics)
        producing = asyncio.create_task(produce(harness.bootstrap, records, rate_per_second=600))
        rng = random.Random(24)

        async def answers() -> bool:
            # pg_isready may answer before the postmaster has noticed the crash.
            try:
                async with harness.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception:  # any failure means not yet
                return False
            return True

        for fault in ("crash", "crash", "restart", "crash"):
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            if fault == "crash":
                # Any backend's death resets them all; the worker's own is the likeliest to
                # be mid-batch, but between retries it may hold none.
                await eventually(answers, within_seconds=60, message="PostgreSQL answers")
                killed = pg.crash_postgres_backend("ingest") or pg.crash_postgres_backend()
                assert killed, "no backend to kill"
            else:
                await asyncio.to_thread(pg.restart_postgres_immediately, 1.0)
            await asyncio.to_thread(pg.wait_postgres_accepts)
            assert worker.alive(), (tmp_path / "ingest-0.log").read_text()[-3000:]
        produced = await producing
        await eventually(answers, within_seconds=60, message="PostgreSQL answers")
        await harness.wait_caught_up(produced, within_seconds=180)
        assert worker.alive(), (tmp_path / "ingest-0.log").read_text()[-3000:]
        await harness.assert_exact(events)


@pytest.mark.timeout(300)
async def test_poison_records_are_dead_lettered_and_never_stop_a_partition(
    harness: Harness,
) -> None:
    """Records that pass decoding yet break the batch in PostgreSQL, and records too large
    for the dead-letter topic: each reaches it (or a reference to it does), and every good
    event around them is applied."""
    # A topic that accepts records larger than its dead-letter topic does (1 MiB).
    await set_topic_configs(
        harness.bootstrap, harness.topics.orders, {"max.message.bytes": str(4 * 1024 * 1024)}
    )
    at = datetime.now(UTC) - timedelta(hours=2)
    good = orders_only(seed=25, customers=50, count=600)

    def order(event_id: str, **fields: object) -> bytes:
        base = {
            "type": "order_placed",
            "schema_version": 1,
            "event_id": event_id,
            "customer_id": "c-poison",
            "order_id": event_id,
            "occurred_at": at.isoformat(),
            "amount": "10",
            "currency": "EUR",
        }
        return orjson.dumps(base | fields)

    poison = {
        # Passes JSON decoding; PostgreSQL's text cannot hold U+0000.
        "nul": order("p-nul", channel="we\u0000b"),
        # 1e12 units at 100,000 base units each overflows numeric(20, 4): only the
        # database can tell.
        "overflow": order("p-overflow", amount="1000000000000", currency="XAU"),
        # Over a megabyte: accepted by its topic, too large to copy to the dead letters.
        "huge": order("p-huge", pad="x" * (2 * 1024 * 1024)),
    }
    harness.env["STREAMSEG_INGEST_CURRENCY_RATES"] = orjson.dumps(
        {**{k: str(v) for k, v in RATES.items()}, "XAU": "100000"}
    ).decode()
    records = as_records(good, harness.topics)
    rng = random.Random(25)
    for name, value in poison.items():
        records.insert(rng.randrange(len(records)), (harness.topics.orders, name.encode(), value))
    harness.worker()
    producer = AIOKafkaProducer(
        bootstrap_servers=harness.bootstrap, max_request_size=4 * 1024 * 1024, acks="all"
    )
    await producer.start()
    produced = Produced()
    try:
        for topic, key, value in records:
            meta = await (await producer.send(topic, value=value, key=key))
            produced.note(meta.topic, meta.partition, meta.offset)
    finally:
        await producer.stop()
    await harness.wait_caught_up(produced, within_seconds=120)
    await harness.assert_exact(good)
    assert all(w.alive() for w in harness.workers)
    letters = await read_dead_letters(
        harness.bootstrap, [dlq_topic(harness.topics.orders)], len(poison)
    )
    by_key = {key.decode(): (value, headers) for key, value, headers in letters if key}
    assert set(by_key) == set(poison), by_key.keys()
    assert by_key["nul"][1][HEADER_REASON] == b"schema_violation"
    assert by_key["nul"][0] == poison["nul"]
    assert by_key["overflow"][1][HEADER_REASON] == b"rejected_by_database"
    assert by_key["overflow"][0] == poison["overflow"]
    value, headers = by_key["huge"]
    assert headers[HEADER_REASON] == b"oversized"
    assert headers[HEADER_REFERENCE] == b"true"
    reference = orjson.loads(value)
    assert reference["reference"]["topic"] == harness.topics.orders
    assert reference["value_bytes"] == len(poison["huge"])
    assert reference["value_sha256"] == hashlib.sha256(poison["huge"]).hexdigest()


async def set_topic_configs(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)]
        )
    finally:
        await admin.close()


@pytest.mark.timeout(300)
async def test_a_duplicate_is_recognised_as_long_as_the_topic_keeps_records(
    harness: Harness,
) -> None:
    """Topics that keep 30 days: a refund re-sent 8 days after it was first applied (here,
    a worker whose clock is 8 days ahead prunes the ledger) must not count again."""
    month = str(30 * 24 * 3600 * 1000)
    for topic in (harness.topics.orders, harness.topics.interactions):
        await set_topic_configs(harness.bootstrap, topic, {"retention.ms": month})
    at = datetime.now(UTC) - timedelta(days=2)
    placed = OrderPlaced(
        event_id="e-placed",
        customer_id="c-late",
        order_id="o-1",
        occurred_at=at,
        amount=Decimal("70"),
        currency="EUR",
    )
    refund = OrderRefunded(
        event_id="e-refund",
        customer_id="c-late",
        order_id="o-1",
        occurred_at=at + timedelta(hours=1),
        amount=Decimal("30"),
        currency="EUR",
    )
    topic = harness.topics.orders
    first = harness.worker()
    produced = await produce(
        harness.bootstrap, [(topic, b"c-late", encode_event(e)) for e in (placed, refund)]
    )
    await harness.wait_caught_up(produced)
    assert await first.terminate() == 0
    port = free_port()
    harness.env |= {
        "STREAMSEG_INGEST_CLOCK": f"offset:{8 * 24 * 3600}",
        "STREAMSEG_INGEST_PRUNE_INTERVAL_SECONDS": "0.2",
        "STREAMSEG_INGEST_OPS_PORT": str(port),
    }
    later = harness.worker()

    async def pruned_since_claim() -> bool:
        log = harness.logs / "ingest-1.log"
        if not (log.is_file() and "partition_claimed" in log.read_text()):
            return False
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return False
        runs = [ln for ln in metrics.splitlines() if ln.startswith("streamseg_ingest_prunes_total")]
        return bool(runs) and float(runs[0].split()[-1]) >= 2

    await eventually(pruned_since_claim, within_seconds=60, message="the later worker prunes")
    produced = await produce(
        harness.bootstrap, [(topic, b"c-late", encode_event(refund))], produced
    )
    await harness.wait_caught_up(produced)
    assert later.alive()
    async with harness.engine.connect() as conn:
        spend = (
            await conn.execute(
                text("SELECT net_spend FROM customer_aggregates WHERE customer_id = 'c-late'")
            )
        ).scalar_one()
    assert spend == Decimal("40")


async def test_ingest_refuses_to_start_on_a_topic_kept_forever_without_a_window(
    harness: Harness,
) -> None:
    await set_topic_configs(harness.bootstrap, harness.topics.orders, {"retention.ms": "-1"})
    worker = harness.worker()
    assert worker.proc is not None
    code = await asyncio.to_thread(worker.proc.wait, 60)
    assert code == 2
    text_ = (harness.logs / "ingest-0.log").read_text()
    assert harness.topics.orders in text_
    assert "STREAMSEG_INGEST_DEDUP_WINDOW_DAYS" in text_
    harness.env["STREAMSEG_INGEST_DEDUP_WINDOW_DAYS"] = "400"
    again = harness.worker()
    produced = await produce(
        harness.bootstrap,
        as_records(orders_only(seed=26, customers=10, count=50), harness.topics),
    )
    await harness.wait_caught_up(produced)
    assert again.alive()


async def test_verify_reports_drift_and_repair_corrects_it(harness: Harness) -> None:
    """What a deployment that ran with the cross-partition undercount does once: recompute
    from the stored rows, see the drift, repair it, and get the customers re-segmented."""
    events = recent_events(seed=27, customers=80, days=200, count=2000)
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(events, harness.topics))
    await harness.wait_caught_up(produced)
    for w in harness.workers:
        await w.terminate()
    async with harness.engine.begin() as conn:
        await conn.execute(text("DELETE FROM segmentation_queue"))
        broken = list(
            (
                await conn.execute(
                    text(
                        "UPDATE customer_aggregates SET order_count = order_count - 1,"
                        " net_spend = net_spend + 1, page_view_count = 0"
                        " WHERE customer_id IN (SELECT customer_id FROM customer_aggregates"
                        "   WHERE order_count > 0 ORDER BY customer_id LIMIT 7)"
                        " RETURNING customer_id"
                    )
                )
            ).scalars()
        )
    assert len(broken) == 7

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.ingest", "verify", *args],
            env=harness.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    found = await asyncio.to_thread(run)
    assert found.returncode == 1, found.stderr
    assert "customers with drift: 7" in found.stdout, found.stdout
    assert "order_count: 7" in found.stdout
    assert "net_spend: 7" in found.stdout
    repaired = await asyncio.to_thread(run, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired and queued for segmentation: 7" in repaired.stdout, repaired.stdout
    clean = await asyncio.to_thread(run)
    assert clean.returncode == 0, clean.stdout
    assert "customers with drift: 0" in clean.stdout, clean.stdout
    async with harness.engine.connect() as conn:
        queued = set(
            (
                await conn.execute(
                    text("SELECT customer_id FROM segmentation_queue WHERE cause = 'repair'")
                )
            ).scalars()
        )
        rows = await conn.execute(
            text(
                "SELECT a.customer_id, a.page_view_count, count(i.type) AS kept"
                " FROM customer_aggregates a LEFT JOIN interactions i"
                "   ON i.customer_id = a.customer_id AND i.type = 'page_view'"
                " GROUP BY a.customer_id, a.page_view_count"
            )
        )
        kept_page_views = {r.customer_id: (r.page_view_count, r.kept) for r in rows}
    assert queued == set(broken)
    # The order side is exact again; interaction counts can only be raised to what the
    # rows still kept give (older ones are pruned), which is what the repair did.
    as_of = datetime.now(UTC)
    expected = expected_aggregates(events, RATES, as_of)
    actual = await read_aggregates(harness.engine, as_of)
    for cid, want in expected.items():
        got = actual[cid]
        assert (got.order_count, got.net_spend, got.first_order_at, got.last_order_at) == (
            want["order_count"],
            want["net_spend"],
            want["first_order_at"],
            want["last_order_at"],
        ), cid
    for cid in broken:
        stored, kept = kept_page_views[cid]
        assert stored == kept, cid


@pytest.mark.timeout(300)
async def test_a_batch_on_a_connection_that_stops_answering_is_retried_on_a_new_one(
    stack_env: dict[str, str], make_topic: MakeTopic, tmp_path: Path
) -> None:
    """The worker's backend stops answering mid-batch (SIGSTOP: as a network partition
    looks to the client) and the batch must not wait forever: past the batch deadline the
    connection is closed and the batch retried; once the backend resumes it finds its client
    gone and rolls back, and nothing is lost or doubled."""
    events = orders_only(seed=28, customers=60, count=1200)
    settings = {
        "STREAMSEG_INGEST_MAX_BATCH_RECORDS": "100",
        "STREAMSEG_INGEST_BATCH_TIMEOUT_SECONDS": "3",
    }
    async with private_pg_harness(stack_env, make_topic, tmp_path, 2, settings) as (pg, harness):
        worker = harness.worker()
        first, rest = events[:200], events[200:]
        produced = await produce(harness.bootstrap, as_records(first, harness.topics))
        await harness.wait_caught_up(produced)
        backends = pg.backend_pids("ingest")
        assert backends, "the worker has no backend"
        for pid in backends:
            os.kill(pid, signal.SIGSTOP)
        log = tmp_path / "ingest-0.log"
        try:
            producing = asyncio.create_task(
                produce(harness.bootstrap, as_records(rest, harness.topics), produced)
            )

            async def gave_up_on_it() -> bool:
                return "batch_connection_stuck" in log.read_text()

            await eventually(gave_up_on_it, within_seconds=60, message="the watchdog fires")
        finally:
            for pid in backends:
                os.kill(pid, signal.SIGCONT)
        produced = await producing
        await harness.wait_caught_up(produced, within_seconds=120)
        assert worker.alive(), log.read_text()[-3000:]
        await harness.assert_exact(events)


async def produce_to(
    bootstrap: str, records: list[tuple[str, int, bytes]], produced: Produced
) -> Produced:
    """Send (topic, partition, value) records, each to the partition named."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        # All sent before any is awaited, so that they reach the worker together.
        futures = [
            await producer.send(topic, value=value, partition=partition)
            for topic, partition, value in records
        ]
        for meta in await asyncio.gather(*futures):
            produced.note(meta.topic, meta.partition, meta.offset)
    finally:
        await producer.stop()
    return produced


@pytest.mark.timeout(300)
async def test_a_loss_on_one_partition_is_read_again_while_the_others_go_on(
    harness: Harness,
) -> None:
    """A crash took back a batch that held one partition only, while the next records land
    on that partition and on one that lost nothing: the loss is read again, and the other
    partition goes on."""
    now = datetime.now(UTC)
    workload = Workload(seed=29, customers=40, start=now - timedelta(days=90), end=now)
    orders = harness.topics.orders
    everywhere = [e for e in workload.events(3000) if e.type.startswith("order_")][:600]
    first = [(orders, i % 4, encode_event(e)) for i, e in enumerate(everywhere[:300])]
    # Only the next batch may find the loss here, not the periodic offset check.
    harness.env["STREAMSEG_INGEST_OFFSET_CHECK_SECONDS"] = "3600"
    harness.worker()
    produced = await produce_to(harness.bootstrap, first, Produced())
    await harness.wait_caught_up(produced)
    # A batch with partition 0 alone, for one customer, is committed and then "lost".
    at = now - timedelta(hours=1)
    lone = [
        OrderPlaced(
            event_id=f"e-lone-{i}",
            customer_id="c-lone",
            order_id=f"o-lone-{i}",
            occurred_at=at,
            amount=Decimal("5"),
            currency="EUR",
        )
        for i in range(5)
    ]
    before_loss = (await stored_offsets(harness.engine))[(orders, 0)]
    produced = await produce_to(
        harness.bootstrap, [(orders, 0, encode_event(e)) for e in lone], produced
    )
    await harness.wait_caught_up(produced)
    async with harness.engine.begin() as conn:
        for table in ("orders", "customer_aggregates", "segmentation_queue"):
            await conn.execute(
                text(f"DELETE FROM {table} WHERE customer_id = 'c-lone'")  # noqa: S608
            )
        await conn.execute(text("DELETE FROM processed_events WHERE event_id LIKE 'e-lone-%'"))
        await conn.execute(
            text("UPDATE ingest_offsets SET next_offset = :n WHERE topic = :t AND partition = 0"),
            {"n": before_loss, "t": orders},
        )
    # The next records land on partition 0 and on partition 1, which lost nothing; the
    # worker is paused meanwhile (well within its session timeout), so that it fetches them
    # in one batch.
    rest = [(orders, i % 2, encode_event(e)) for i, e in enumerate(everywhere[300:])]
    proc = harness.workers[0].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        produced = await produce_to(harness.bootstrap, rest, produced)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    await harness.wait_caught_up(produced, within_seconds=60)
    await harness.assert_exact([*everywhere, *lone])


async def test_a_batch_that_fails_its_offset_check_sends_all_its_partitions_back(
    engine: AsyncEngine, make_topic: MakeTopic, stack_env: dict[str, str]
) -> None:
    """The worker's own state after a batch over two partitions finds one of them behind in
    PostgreSQL (a crash took back an earlier batch of it): the transaction rolled back
    whole, so the other partition must resume from its committed offset too. It had been
    fetched past the batch, and, left so, would never be read again (seen once as a stall
    after a crash: some partitions rewound, the rest silent)."""
    bootstrap = stack_env["STREAMSEG_KAFKA_BOOTSTRAP"]
    topic = await make_topic("orders", 2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([tp0, tp1])
        worker = IngestWorker(
            IngestSettings(orders_topic=topic),
            engine,
            consumer,
            producer,
            SystemClock(),
            IngestMetrics(CollectorRegistry()),
            "test-worker",
        )
        await worker.claim([tp0, tp1])
        async with engine.begin() as conn:
            # Stored: partition 0 at 5 (10 was committed, then lost), partition 1 at 7.
            await conn.execute(
                text(
                    "UPDATE ingest_offsets"
                    " SET next_offset = CASE partition WHEN 0 THEN 5 ELSE 7 END"
                )
            )
        worker._committed.update({tp0: 10, tp1: 7})
        worker._fetched.update({tp0: 12, tp1: 9})
        epoch = worker._epochs[tp0]
        batch = PreparedBatch(
            [Part(tp0, epoch, 10, 12), Part(tp1, epoch, 7, 9)],
            {},
            build_changes([], RATES, datetime.now(UTC)),
        )
        await worker._process(batch)
        assert worker._committed == {tp0: 5, tp1: 7}
        assert worker._fetched == {tp0: 5, tp1: 7}
        assert await consumer.position(tp0) == 5
        assert await consumer.position(tp1) == 7
    finally:
        await consumer.stop()
        await producer.stop()
