"""Ingest exact under the faults real deployments meet, compared with the independent checker:
producers that do not key by customer, orders placed twice, batches PostgreSQL lost."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from shared.events import Event, OrderPlaced, encode_event
from shared.workload import Workload
from tests.conftest import eventually
from tests.support.ingest import Harness, as_records, produce

pytestmark = pytest.mark.integration


def spread(
    events: list[Event], harness: Harness, partitions: int, seed: int
) -> list[tuple[str, bytes | None, bytes]]:
    """Records keyed by event id, not customer: one customer's events land on every
    partition, as with round-robin producers, order-id keys or added partitions."""
    rng = random.Random(seed)
    records = as_records(events, harness.topics)
    # A key per record chosen so each partition gets a share of each customer.
    return [(topic, f"k{rng.randrange(partitions * 97)}".encode(), v) for topic, _, v in records]


def orders_only(seed: int, customers: int, count: int) -> list[Event]:
    end = datetime.now(UTC) - timedelta(minutes=1)
    workload = Workload(seed=seed, customers=customers, start=end - timedelta(days=300), end=end)
    return [e for e in workload.events(count * 3) if e.type.startswith("order_")][:count]


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
    events = list(
        Workload(
            seed=22,
            customers=150,
            start=datetime.now(UTC) - timedelta(days=200),
            end=datetime.now(UTC) - timedelta(minutes=1),
        ).events(3000)
    )
    first, second = events[:2000], events[2000:]
    harness.worker()
    produced = await produce(harness.bootstrap, as_records(first, harness.topics))
    await harness.wait_caught_up(produced)
    async with harness.engine.begin() as conn:
        for table in ("orders", "interactions", "customer_aggregates", "processed_events"):
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - constants
        await conn.execute(text("UPDATE ingest_offsets SET next_offset = 0"))
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
    events = list(
        Workload(
            seed=23,
            customers=100,
            start=datetime.now(UTC) - timedelta(days=100),
            end=datetime.now(UTC) - timedelta(minutes=1),
        ).events(1500)
    )
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
