"""Ingest's SQL on its own: fencing, and windows that move with time and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as repo
from shared.db.engine import pg_connection
from shared.db.literals import text_array, timestamp_array
from tests.support.ingest import CustomerAggregates, fetch_aggregates

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(engine: AsyncEngine) -> AsyncIterator[Any]:
    async with pg_connection(engine) as raw:
        yield raw


async def test_old_owner_cannot_commit_after_new_owner_claims(engine: AsyncEngine) -> None:
    async with pg_connection(engine) as a, pg_connection(engine) as b:
        async with a.transaction():
            [old] = await repo.claim_partitions(a, [("orders", 0)], "worker-a")
        # Worker A starts a batch and takes the offset row lock first...
        tx = a.transaction()
        await tx.start()
        await repo.advance_offsets(a, [(old, 10)])
        # ...so worker B's claim waits until A's batch ends.
        claim = asyncio.create_task(_claim(b, "worker-b"))
        await asyncio.sleep(0.3)
        assert not claim.done()
        await tx.commit()
        new = await claim
        assert new.epoch == old.epoch + 1
        assert new.next_offset == 10  # B resumes exactly where A's committed batch ended
        # A, now stale, can no longer write anything.
        with pytest.raises(repo.FencedError, match=r"orders\[0\]"):
            async with a.transaction():
                await repo.advance_offsets(a, [(old, 20)])
        async with b.transaction():
            await repo.advance_offsets(b, [(new, 15)])
        row = await b.fetchrow("SELECT next_offset, owner FROM ingest_offsets")
        assert (row["next_offset"], row["owner"]) == (15, "worker-b")


async def _claim(conn: asyncpg.Connection, owner: str) -> repo.Ownership:
    async with conn.transaction():
        [claimed] = await repo.claim_partitions(conn, [("orders", 0)], owner)
    return claimed


async def test_windows_expire_as_time_passes_without_events(conn: Any) -> None:
    placed = datetime(2026, 1, 1, 12, tzinfo=UTC)
    viewed = placed + timedelta(days=2)
    async with conn.transaction():
        await repo.apply_orders(
            conn, [repo.OrderChange("c1", "o1", placed_at=placed, amount=Decimal("50"))]
        )
        await repo.insert_interactions(conn, [("c1", viewed, "page_view", "e-1", None)])
        await repo.touch_customers(
            conn,
            [repo.CustomerTouch("c1", {"page_view": 1}, viewed, last_event_at=viewed)],
        )

    async def at(t: datetime) -> CustomerAggregates:
        return (await fetch_aggregates(conn, ["c1"], t))["c1"]

    day = timedelta(days=1)
    first = await at(placed + 29 * day)
    assert (first.orders_30d, first.orders_90d, first.orders_365d) == (1, 1, 1)
    assert first.spend_30d == Decimal("50")
    assert (first.interactions_7d, first.interactions_30d) == (0, 1)
    assert (await at(viewed + 7 * day - timedelta(microseconds=1))).interactions_7d == 1
    assert (await at(viewed + 7 * day)).interactions_7d == 0
    # Exactly 30 days later the order has left the 30-day window, not a moment earlier.
    assert (await at(placed + 30 * day - timedelta(microseconds=1))).orders_30d == 1
    assert (await at(placed + 30 * day)).orders_30d == 0
    later = await at(placed + 100 * day)
    assert (later.orders_30d, later.orders_90d, later.orders_365d) == (0, 0, 1)
    assert later.interactions_7d == later.interactions_30d == 0
    gone = await at(placed + 366 * day)
    assert gone.orders_365d == 0
    assert gone.spend_365d == Decimal(0)
    # Lifetime figures never expire.
    assert (gone.order_count, gone.net_spend, gone.interaction_count) == (1, Decimal("50"), 1)


async def test_cancellation_before_placement_still_cancels(conn: Any) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    async with conn.transaction():
        await repo.apply_orders(conn, [repo.OrderChange("c1", "o1", cancelled_at=t)])
        await repo.apply_orders(conn, [repo.OrderChange("c1", "o1", refunded=Decimal("5"))])
        await repo.apply_orders(
            conn,
            [
                repo.OrderChange("c1", "o1", placed_at=t - timedelta(hours=1), amount=Decimal(9)),
                repo.OrderChange("c1", "o2", placed_at=t, amount=Decimal("20")),
            ],
        )
        await repo.apply_orders(conn, [repo.OrderChange("c1", "o2", refunded=Decimal("25"))])
        await repo.touch_customers(conn, [repo.CustomerTouch("c1", last_event_at=t)])
    agg = (await fetch_aggregates(conn, ["c1"], t + timedelta(days=1)))["c1"]
    assert agg.order_count == 1  # o1 was cancelled, whatever the arrival order
    assert agg.net_spend == Decimal(0)  # o2 refunded beyond its amount counts as zero, not less
    assert agg.last_order_at == t


@pytest.mark.parametrize("expect_new", [True, False])
async def test_dedup_ledger_keeps_only_unseen_ids_either_way(conn: Any, expect_new: bool) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    async with conn.transaction():
        assert await repo.keep_new_events(conn, ["e1", "e2"], t, expect_new=True) == {"e1", "e2"}
    async with conn.transaction():
        # A batch that repeats e2 gets the same answer whichever insert is tried first, and
        # the statements after it in the transaction still run (the savepoint rolled back).
        fresh = await repo.keep_new_events(conn, ["e2", "e3"], t, expect_new=expect_new)
        assert fresh == {"e3"}
        await repo.touch_customers(conn, [repo.CustomerTouch("c1", last_event_at=t)])
    ids = await conn.fetch("SELECT event_id FROM processed_events ORDER BY event_id")
    assert [r["event_id"] for r in ids] == ["e1", "e2", "e3"]
    assert await conn.fetchval("SELECT count(*) FROM customer_aggregates") == 1


async def test_order_side_is_written_only_for_order_customers(conn: Any) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    async with conn.transaction():
        # As the worker writes a batch: orders and both kinds of touch, each row once.
        await repo.apply_batch(
            conn,
            repo.touch_args(
                [
                    repo.CustomerTouch("c1", last_event_at=t),
                    repo.CustomerTouch("c2", {"login": 1}, t, last_event_at=t),
                ],
                ["c1"],
                [repo.OrderChange("c1", "o1", placed_at=t, amount=Decimal("12"))],
            ),
        )
    async with conn.transaction():
        await repo.touch_customers(
            conn, [repo.CustomerTouch("c1", {"login": 2}, t, last_event_at=t)]
        )
    rows = await conn.fetch(
        "SELECT customer_id, order_count, net_spend, last_order_at, interaction_count, version"
        " FROM customer_aggregates ORDER BY customer_id"
    )
    assert [tuple(r) for r in rows] == [
        ("c1", 1, Decimal("12.0000"), t, 2, 2),  # an interaction alone keeps the order side
        ("c2", 0, Decimal("0.0000"), None, 1, 1),
    ]


async def test_ids_with_quotes_braces_and_backslashes_arrive_as_sent(conn: Any) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    odd = ['c"1', "c\\2", "c,{3}", "NULL"]
    async with conn.transaction():
        await repo.apply_orders(
            conn,
            [repo.OrderChange(cid, f"o-{cid}", placed_at=t, amount=Decimal("1.5")) for cid in odd]
            + [repo.OrderChange("plain", "o1", refunded=Decimal("2"))],
        )
        await repo.touch_customers(
            conn, [repo.CustomerTouch(cid, {"login": 2}, t, last_event_at=t) for cid in odd]
        )
        await repo.mark_for_segmentation(conn, odd, t, [t] * len(odd))
    orders = await conn.fetch("SELECT customer_id, order_id, amount, channel FROM orders")
    assert sorted(tuple(r) for r in orders) == sorted(
        [(cid, f"o-{cid}", Decimal("1.5"), None) for cid in odd] + [("plain", "o1", None, None)]
    )
    aggregates = await conn.fetch(
        "SELECT customer_id, login_count, order_count FROM customer_aggregates"
    )
    # "plain" has a refund for an order not yet placed: a customer row, nothing counted.
    assert sorted(tuple(r) for r in aggregates) == sorted(
        [(cid, 2, 1) for cid in odd] + [("plain", 0, 0)]
    )
    queued = await conn.fetch("SELECT customer_id FROM segmentation_queue")
    assert sorted(r["customer_id"] for r in queued) == sorted(odd)


async def test_timestamp_and_text_literals_read_back_exactly(conn: Any) -> None:
    """The evaluator's and the read model's statements send times, reasons and JSON as
    array literals: offsets, microseconds, NULLs and JSON's quotes survive the parser."""
    times = [
        datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        None,
    ]
    texts = ['{"a": "b\\"c"}', "reason: x < 3, y = 'z'", "", None]
    row = await conn.fetchrow(
        "SELECT $1::text::timestamptz[] AS t, $2::text::text[] AS s",
        timestamp_array(times),
        text_array(texts),
    )
    assert list(row["t"]) == times
    assert list(row["s"]) == texts
