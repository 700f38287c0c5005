"""Claiming without holding queue rows: ingest never waits for an evaluation, a customer
queued again meanwhile is evaluated again, and segmenters never lease the same customer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as ingest
from services.segmenter import queue
from services.segmenter import repository as repo
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.worker import Evaluator, Ruleset, Writes
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.segment_cache import SegmentCache
from shared.segmentation.facts import Interaction
from shared.settings import ConnectionSettings
from tests.integration.test_segmenter import random_histories
from tests.support.segmenter import History, evaluator, ruleset, scalar, seed, segments

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def browsers(n: int) -> list[History]:
    return [History(f"c{i}", interactions=[Interaction(NOW - DAY)]) for i in range(n)]


async def test_ingest_requeues_a_customer_mid_evaluation_without_waiting(
    engine: AsyncEngine,
) -> None:
    await seed(engine, browsers(3), NOW)
    async with pg_connection(engine) as segmenter, pg_connection(engine) as ingester:
        leased = await queue.lease_due(segmenter, NOW, 10)
        due = [b.due for b in await repo.load_leased(segmenter, leased)]
        assert sorted(leased) == [d.customer_id for d in due] == ["c0", "c1", "c2"]

        async def requeue() -> None:
            async with ingester.transaction():
                await ingest.mark_for_segmentation(ingester, ["c1"], NOW, [NOW])

        await asyncio.wait_for(requeue(), timeout=5)  # while c1 is leased and read
        async with segmenter.transaction():
            settled = await queue.settle(segmenter, due, NOW + timedelta(seconds=2))
        await queue.release_leases(segmenter)

    assert settled == {"c0", "c2"}
    # Still queued for what came after the read, due from the evaluation on.
    assert await scalar(engine, "SELECT count(*) FROM segmentation_queue") == 1
    assert await scalar(
        engine, "SELECT due_at FROM segmentation_queue WHERE customer_id = 'c1'"
    ) == NOW + timedelta(seconds=2)


async def test_settling_leaves_a_settled_customer_due_at_its_wake_up(
    engine: AsyncEngine,
) -> None:
    await seed(engine, browsers(3), NOW)
    wake = NOW + 7 * DAY
    async with pg_connection(engine) as segmenter, pg_connection(engine) as ingester:
        leased = await queue.lease_due(segmenter, NOW, 10)
        due = [b.due for b in await repo.load_leased(segmenter, leased)]
        async with ingester.transaction():
            await ingest.mark_for_segmentation(ingester, ["c1"], NOW, [NOW])
        async with segmenter.transaction():
            settled = await queue.settle(segmenter, due, NOW, {"c0": wake, "c1": wake})
        await queue.release_leases(segmenter)

    assert settled == {"c0", "c2"}
    rows = await scalar(
        engine,
        "SELECT string_agg(customer_id || ' ' || cause || ' ' || (due_at = :wake)::text,"
        " ', ' ORDER BY customer_id) FROM segmentation_queue",
        wake=wake,
    )
    # c0 waits for its wake-up; c1 (changed meanwhile) is due for its new facts, and gets
    # its wake-up when evaluated again; c2 had none and is gone.
    assert rows == "c0 time true, c1 event false"


async def test_a_row_locked_by_ingest_is_skipped_not_waited_for(engine: AsyncEngine) -> None:
    await seed(engine, browsers(2), NOW)
    async with pg_connection(engine) as segmenter, pg_connection(engine) as ingester:
        leased = await queue.lease_due(segmenter, NOW, 10)
        due = [b.due for b in await repo.load_leased(segmenter, leased)]
        async with ingester.transaction():
            await ingest.mark_for_segmentation(ingester, ["c1"], NOW, [NOW])
            async with segmenter.transaction():
                settled = await asyncio.wait_for(queue.settle(segmenter, due, NOW), timeout=5)
        await queue.release_leases(segmenter)

    assert settled == {"c0"}
    assert await scalar(engine, "SELECT count(*) FROM segmentation_queue") == 1


async def test_segmenters_never_lease_the_same_customer(
    engine: AsyncEngine, settings: ConnectionSettings
) -> None:
    await seed(engine, browsers(6), NOW)
    async with pg_connection(engine) as first, pg_connection(engine) as second:
        a = await queue.lease_due(first, NOW, 4)
        b = await queue.lease_due(second, NOW, 4)
        assert len(a) == 4
        assert sorted(a + b) == [f"c{i}" for i in range(6)]  # the second finds the rest
        await queue.release_leases(first)
        assert len(await queue.lease_due(second, NOW, 10)) == 6  # its own again, and a's
        await queue.release_leases(second)


class IngestMidBatch(Evaluator):
    """Lets ingest commit a new order for `c0` after the batch read it, before it commits."""

    ordered = False

    async def _commit(
        self, conn: Any, due: list[queue.Due], now: datetime, writes: Writes, rules: Ruleset
    ) -> None:
        if not self.ordered:
            self.ordered = True
            order = History("c0", orders=[(NOW - DAY, Decimal("20.00"))])
            await asyncio.wait_for(seed(self.engine, [order], NOW), timeout=5)
        await super()._commit(conn, due, now, writes, rules)


async def test_facts_that_arrive_mid_batch_are_evaluated_next(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings
) -> None:
    await seed(engine, browsers(2), NOW)
    cache = SegmentCache(redis, settings.redis_key_prefix)
    rules = await ruleset(engine)
    ev = IngestMidBatch(
        engine, cache, FixedClock(NOW), SegmenterMetrics(CollectorRegistry()), rules
    )

    assert await ev.evaluate_due() == 2
    assert (await segments(engine))[("c0", "lifecycle")] == "prospect"  # as read
    due = "SELECT customer_id FROM segmentation_queue WHERE due_at <= :now"
    assert await scalar(engine, due, now=NOW) == "c0"
    while await ev.evaluate_due():
        pass

    assert (await segments(engine))[("c0", "lifecycle")] == "new"
    versions = "SELECT version FROM customer_evaluations WHERE customer_id = :c"
    assert await scalar(engine, versions, c="c0") == 2
    assert await scalar(engine, versions, c="c1") == 1


async def test_a_leased_batch_reads_who_has_facts(engine: AsyncEngine) -> None:
    histories = random_histories(60, 5, NOW)
    await seed(engine, histories, NOW)
    ids = [h.customer_id for h in histories]
    async with pg_connection(engine) as conn:
        await ingest.mark_for_segmentation(conn, ["nobody"], NOW, [NOW])
        batch = await repo.load_leased(conn, [*ids, "nobody"])

    assert [b.due.customer_id for b in batch] == sorted([*ids, "nobody"])
    assert {b.due.customer_id: b.has_facts for b in batch} == {
        **dict.fromkeys(ids, True),
        "nobody": False,
    }
    assert all(b.state == repo.State(0, 0, {}, {}) for b in batch)


async def test_evaluation_loops_of_one_process_share_the_queue(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings
) -> None:
    await seed(engine, random_histories(600, 6, NOW), NOW)
    cache = SegmentCache(redis, settings.redis_key_prefix)
    ev = evaluator(engine, cache, FixedClock(NOW), await ruleset(engine), batch_size=40)

    async def until_idle() -> None:
        while await ev.evaluate_due():
            pass

    await asyncio.gather(*(until_idle() for _ in range(3)))

    # Each customer evaluated exactly once, by one of the loops.
    assert await scalar(engine, "SELECT count(*) FROM customer_evaluations") == 600
    assert await scalar(engine, "SELECT max(version) FROM customer_evaluations") == 1
    assert await scalar(engine, "SELECT count(*) FROM segment_history") == len(
        await segments(engine)
    )
