"""Driving the real ingest service in tests: produce events, run workers, read results."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.settings import IngestSettings
from shared.db.engine import driver_connection
from shared.events import Event, encode_event
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.facts import FactsPlan, read_facts
from shared.kafka import make_producer
from shared.security import PLAINTEXT, KafkaSecurity
from shared.segmentation.events import BUILT_IN_EVENT_METRICS
from tests.conftest import ROOT, eventually
from tests.support.checker import differences, expected_aggregates


@dataclass
class Topics:
    orders: str
    interactions: str
    customers: str = "customers"

    def all(self) -> list[str]:
        return [self.orders, self.interactions, self.customers]

    def for_event(self, event: Event) -> str:
        return self.orders if isinstance(event, ORDER_EVENT_CLASSES) else self.interactions


@dataclass
class Produced:
    """Where the records went: the next offset expected per (topic, partition)."""

    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def note(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.ends[key] = max(self.ends.get(key, 0), offset + 1)


async def produce(
    bootstrap: str,
    records: Sequence[tuple[str, bytes | None, bytes]],
    produced: Produced | None = None,
    *,
    rate_per_second: float | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> Produced:
    """Send (topic, key, value) records in order; optionally paced."""
    produced = produced or Produced()
    producer = make_producer(bootstrap, security=security, client_id="test-producer")
    await producer.start()
    try:
        futures = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i, (topic, key, value) in enumerate(records):
            futures.append(await producer.send(topic, value=value, key=key))
            if rate_per_second and i % 200 == 0:
                ahead = started + i / rate_per_second - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for meta in await asyncio.gather(*futures):
            produced.note(meta.topic, meta.partition, meta.offset)
    finally:
        await producer.stop()
    return produced


def as_records(
    events: Sequence[Event], topics: Topics, *, duplicate: bool = False, seed: int = 0
) -> list[tuple[str, bytes | None, bytes]]:
    """Events as Kafka records keyed by customer; with `duplicate`, every event twice and
    the whole sequence shuffled (so within each partition too)."""
    records: list[tuple[str, bytes | None, bytes]] = [
        (topics.for_event(e), e.customer_id.encode(), encode_event(e)) for e in events
    ]
    if duplicate:
        records = records + records
        random.Random(seed).shuffle(records)
    return records


async def stored_offsets(engine: AsyncEngine) -> dict[tuple[str, int], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT topic, partition, next_offset FROM ingest_offsets"))
        return {(r.topic, r.partition): r.next_offset for r in rows}


async def caught_up(engine: AsyncEngine, produced: Produced) -> bool:
    stored = await stored_offsets(engine)
    return all(stored.get(k, 0) >= end for k, end in produced.ends.items())


@dataclass(frozen=True, slots=True)
class CustomerAggregates:
    """Aggregates of one customer as of a moment, windows included, as the read model gives
    them (shared/facts), for comparing with an independent checker."""

    customer_id: str
    order_count: int
    net_spend: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    average_order_value: Decimal | None
    orders_30d: int
    orders_90d: int
    orders_365d: int
    spend_30d: Decimal
    spend_90d: Decimal
    spend_365d: Decimal
    interaction_count: int
    interaction_counts: dict[str, int]
    last_interaction_at: datetime | None
    interactions_7d: int
    interactions_30d: int
    open_cart_at: datetime | None


async def fetch_aggregates(
    conn: Any, customer_ids: Sequence[str], as_of: datetime
) -> dict[str, CustomerAggregates]:
    """Every customer's aggregates at `as_of`, read without folding anything in."""
    read = await read_facts(conn, list(customer_ids), as_of, FactsPlan(BUILT_IN_EVENT_METRICS, {}))
    out = {}
    for cid, f in read.facts.items():
        e = f.events
        count = f.order_count
        out[cid] = CustomerAggregates(
            customer_id=cid,
            order_count=count,
            net_spend=f.net_spend,
            first_order_at=f.first_order_at,
            last_order_at=f.last_order_at,
            average_order_value=(f.net_spend / count).quantize(Decimal("0.0001"))
            if count
            else None,
            orders_30d=e["orders_30d"],
            orders_90d=e["orders_90d"],
            orders_365d=e["orders_365d"],
            spend_30d=e["spend_30d"],
            spend_90d=e["spend_90d"],
            spend_365d=e["spend_365d"],
            interaction_count=f.interaction_count,
            interaction_counts=dict(f.interaction_counts_by_type),
            last_interaction_at=f.last_interaction_at,
            interactions_7d=e["interactions_7d"],
            interactions_30d=e["interactions_30d"],
            open_cart_at=f.last_cart_at,
        )
    return out


async def read_aggregates(engine: AsyncEngine, as_of: datetime) -> dict[str, CustomerAggregates]:
    async with engine.connect() as conn:
        ids = list(
            (await conn.execute(text("SELECT customer_id FROM customer_aggregates"))).scalars()
        )
        return await fetch_aggregates(await driver_connection(conn), ids, as_of)


class IngestProcess:
    """`python -m services.ingest` as a child process, which tests may kill -9."""

    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self._env = env
        self._log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self._log_path, "ab")  # noqa: SIM115 - the child owns it while it runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.ingest"],
            cwd=ROOT,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def terminate(self, within_seconds: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, within_seconds)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()


@dataclass
class Harness:
    topics: Topics
    env: dict[str, str]
    bootstrap: str
    engine: AsyncEngine
    logs: Path
    workers: list[IngestProcess]

    def worker(self) -> IngestProcess:
        w = IngestProcess(self.env, str(self.logs / f"ingest-{len(self.workers)}.log"))
        self.workers.append(w)
        w.start()
        return w

    async def wait_caught_up(self, produced: Produced, within_seconds: float = 120) -> None:
        async def done() -> bool:
            return await caught_up(self.engine, produced)

        try:
            await eventually(done, within_seconds=within_seconds, message="ingest caught up")
        except AssertionError:
            for w in self.workers:
                assert w.alive() or w.proc is None or w.proc.returncode in (0, -9), (
                    self.logs.read_text() if self.logs.is_file() else "worker died"
                )
            raise

    async def assert_exact(self, events: list[Event]) -> None:
        as_of = datetime.now(UTC)
        expected = expected_aggregates(events, IngestSettings().currency_rates, as_of)
        actual = await read_aggregates(self.engine, as_of)
        problems = differences(expected, actual)
        assert not problems, f"{len(problems)} differences, first: {problems[:10]}"

    async def wait_owners(self, workers: int, within_seconds: float = 60) -> None:
        """Until `workers` distinct workers own partitions of the test's topics."""

        async def owned() -> bool:
            async with self.engine.connect() as conn:
                owners = await conn.execute(
                    text("SELECT count(DISTINCT owner) FROM ingest_offsets")
                )
                return bool(owners.scalar_one() == workers)

        await eventually(owned, within_seconds=within_seconds, message=f"{workers} owners")


async def read_dead_letters(
    bootstrap: str, topics: list[str], expected: int, *, security: KafkaSecurity = PLAINTEXT
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """(key, value, headers) of the dead letters on `topics`, once `expected` have come."""
    found: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        **security.client_options(),
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(found) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found += [(r.key, r.value or b"", dict(r.headers)) for r in batch]
    finally:
        await consumer.stop()
    return found
