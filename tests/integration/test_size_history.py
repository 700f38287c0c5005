"""Size history: deltas committed with the segmenter's changes, folded and snapshotted by
the size job, corrected by a recount, and served by GET /v1/stats/sizes."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.erasure.repository import erase_customer
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.sizes import SizeHistory, Tier
from services.segmenter.worker import Evaluator
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.segment_cache import SegmentCache
from shared.segmentation import OrderFact, PopulationStats, build_facts, evaluate
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.integration.test_segmenter import random_histories
from tests.support.segmenter import evaluator, ruleset, seed

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, 0, 2, tzinfo=UTC)
TIERS = (Tier(300, 7 * 86400), Tier(3600, 90 * 86400), Tier(86400, 730 * 86400))


def size_job(
    engine: AsyncEngine, clock: FixedClock, recount_seconds: float = 86400
) -> tuple[SizeHistory, SegmenterMetrics]:
    metrics = SegmenterMetrics(CollectorRegistry())
    job = SizeHistory(
        engine,
        clock,
        metrics,
        TIERS,
        fold_interval_seconds=1,
        recount_interval_seconds=recount_seconds,
    )
    return job, metrics


async def folded(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    async with pg_connection(engine) as conn:
        rows = await conn.fetch("SELECT * FROM segment_sizes WHERE customers <> 0")
    return {(r["dimension"], r["segment"]): r["customers"] for r in rows}


async def counted(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    async with pg_connection(engine) as conn:
        rows = await conn.fetch(
            "SELECT dimension, segment, count(*) AS n FROM customer_segments GROUP BY 1, 2"
        )
    return {(r["dimension"], r["segment"]): r["n"] for r in rows}


async def until_idle(*evaluators: Evaluator) -> None:
    async def drain(ev: Evaluator) -> None:
        while await ev.evaluate_due():
            pass

    await asyncio.gather(*(drain(ev) for ev in evaluators))


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


async def test_sizes_follow_changes_without_a_count_and_match_the_core(
    engine: AsyncEngine, cache: SegmentCache, settings: ConnectionSettings
) -> None:
    clock = FixedClock(NOW)
    job, metrics = size_job(engine, clock, recount_seconds=1000 * 86400)
    assert await job.step() == "recounted"  # the first ever: nothing stored, no drift
    histories = random_histories(400, 7, NOW)
    await seed(engine, histories, NOW)
    rules = await ruleset(engine)
    # Two evaluators at once, the size job folding while they commit.
    evs = [evaluator(engine, cache, clock, rules, batch_size=37) for _ in range(2)]

    async def fold_meanwhile() -> None:
        for _ in range(20):
            assert await job.step() in ("folded", "locked")
            await asyncio.sleep(0.01)

    await asyncio.gather(until_idle(*evs), fold_meanwhile())
    assert await job.step() == "folded"

    # The independent answer: the core's evaluation of each customer from its input alone.
    expected: Counter[tuple[str, str]] = Counter()
    for h in histories:
        facts = build_facts(
            h.customer_id,
            NOW,
            orders=[OrderFact(at, amount) for at, amount in h.orders],
            interactions=h.interactions,
        )
        result = evaluate(rules.definitions, facts, NOW, {}, PopulationStats())
        for dimension, decision in result.assignments.items():
            expected[dimension, decision.segment] += 1
        for name, membership in result.audiences.items():
            if membership.segment is not None:
                expected[name, membership.segment] += 1
    assert await folded(engine) == dict(expected)
    assert await counted(engine) == dict(expected)

    # Time alone moves customers (wake-ups); an erasure takes one away. Folded, not counted.
    clock.set(NOW + timedelta(days=45, minutes=3))
    await seed(engine, [], clock.now())
    await until_idle(*evs)
    async with pg_connection(engine) as conn, conn.transaction():
        await erase_customer(conn, histories[0].customer_id)
    assert await job.step() == "folded"
    later = await counted(engine)
    assert later != dict(expected)
    assert await folded(engine) == later
    assert metrics.size_drift._value.get() == 0

    async with pg_connection(engine) as conn:
        snapshots = await conn.fetch(
            "SELECT step_seconds, at, dimension, segment, customers FROM segment_size_snapshots"
        )
    by_step: dict[int, dict[datetime, dict[tuple[str, str], int]]] = {}
    for r in snapshots:
        by_step.setdefault(r["step_seconds"], {}).setdefault(r["at"], {})[
            r["dimension"], r["segment"]
        ] = r["customers"]
    # Each segment's first fold in an interval took its snapshot: in the first hour, while
    # the first evaluations (all entries) were committing, so at most the final sizes.
    first_hour = by_step[3600][datetime(2026, 6, 1, tzinfo=UTC)]
    assert first_hour
    assert all(n <= expected[k] for k, n in first_hour.items())
    assert by_step[300][datetime(2026, 7, 16, 0, 5, tzinfo=UTC)] == later
    assert by_step[3600][datetime(2026, 7, 16, 0, 0, tzinfo=UTC)] == later
    assert by_step[86400][datetime(2026, 7, 16, tzinfo=UTC)] == later
    # Past its retention: 5-minute snapshots of 45 days ago are gone, the others stay.
    assert list(by_step[300]) == [datetime(2026, 7, 16, 0, 5, tzinfo=UTC)]
    assert min(by_step[86400]) == datetime(2026, 6, 1, tzinfo=UTC)


async def test_a_recount_corrects_drift_and_reports_it(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    clock = FixedClock(NOW)
    job, metrics = size_job(engine, clock)
    await job.step()
    await seed(engine, random_histories(60, 3, NOW), NOW)
    rules = await ruleset(engine)
    await until_idle(evaluator(engine, cache, clock, rules))
    await job.step()
    truth = await counted(engine)
    # Broken on purpose: totals off by 5 and 2, and a delta of a change that never was.
    (dimension, segment), (other, other_segment) = sorted(truth)[:2]
    async with pg_connection(engine) as conn:
        await conn.execute(
            "UPDATE segment_sizes SET customers = customers + 5"
            " WHERE dimension = $1 AND segment = $2",
            dimension,
            segment,
        )
        await conn.execute(
            "INSERT INTO segment_size_deltas (dimension, segment, customers) VALUES ($1, $2, -2)",
            other,
            other_segment,
        )
    clock.set(NOW + timedelta(hours=23))
    assert await job.step() == "folded"  # not due yet
    assert await folded(engine) != truth
    clock.set(NOW + timedelta(days=1))
    assert await job.step() == "recounted"
    assert await folded(engine) == truth
    assert metrics.size_drift._value.get() == 7
    async with pg_connection(engine) as conn:
        drifts = await conn.fetch("SELECT drift_customers FROM segment_size_recounts ORDER BY id")
    assert [r["drift_customers"] for r in drifts] == [0, 7]


async def test_sizes_route(engine: AsyncEngine, settings: ConnectionSettings) -> None:
    async with pg_connection(engine) as conn:
        await conn.executemany(
            "INSERT INTO segment_size_snapshots VALUES ($1, $2, $3, $4, $5)",
            [
                (300, NOW + timedelta(minutes=m), "lifecycle", "active", 10 + m)
                for m in range(0, 120, 5)
            ]
            + [(300, NOW + timedelta(minutes=m), "lifecycle", "new", 3) for m in range(0, 60, 5)]
            + [
                (3600, NOW + timedelta(hours=h), "lifecycle", "active", 100 + h)
                for h in range(-5, 2)
            ]
            + [(300, NOW, "vip_club", "member", 4)],
        )
    key = await make_key(engine, "segments:read")
    async with running_api(settings) as (_, http):
        http.headers.update(bearer(key))
        since, until = NOW.isoformat(), (NOW + timedelta(hours=2)).isoformat()

        fine = await http.get(
            "/v1/stats/sizes", params={"since": since, "until": until, "dimension": "lifecycle"}
        )
        assert fine.status_code == 200, fine.text
        body = fine.json()
        assert (body["step_seconds"], body["source_step_seconds"]) == (300, 300)
        assert len(body["at"]) == 24
        assert [(s["segment"], s["customers"][:2], s["customers"][-1]) for s in body["series"]] == [
            ("active", [10, 15], 125),
            ("new", [3, 3], 0),  # absent from a snapshot: empty then
        ]

        hourly = await http.get(
            "/v1/stats/sizes", params={"since": since, "until": until, "step": "1h"}
        )
        body = hourly.json()
        # The hourly snapshots reach back to `since`: the coarsest that does is read.
        assert (body["step_seconds"], body["source_step_seconds"]) == (3600, 3600)
        assert [s["customers"] for s in body["series"] if s["segment"] == "active"] == [[100, 101]]

        quarter = await http.get(
            "/v1/stats/sizes", params={"since": since, "until": until, "step": "15m"}
        )
        body = quarter.json()
        assert (body["step_seconds"], body["source_step_seconds"]) == (900, 300)
        active = next(s for s in body["series"] if s["segment"] == "active")
        assert active["customers"][:3] == [10, 25, 40]  # the first of each quarter hour

        for step, error in (
            ("7m", "invalid_step"),
            ("soon", "invalid_step"),
            ("1s", "invalid_step"),
        ):
            r = await http.get("/v1/stats/sizes", params={"since": since, "step": step})
            assert (r.status_code, r.json()["error"]) == (422, error), step
        backwards = await http.get("/v1/stats/sizes", params={"since": until, "until": since})
        assert backwards.json()["error"] == "invalid_period"
        http.headers.clear()
        assert (await http.get("/v1/stats/sizes")).status_code == 401
