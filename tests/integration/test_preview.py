"""Definitions previews against real PostgreSQL and Redis: the prediction is checked against
counts made here from the seeded histories, then against what activation actually does."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import definitions, population
from services.segmenter import repository as repo
from services.segmenter.backfill import BackfillFeeder
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.preview import PreviewRunner
from services.segmenter.ruleset import Ruleset
from services.segmenter.worker import Evaluator
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.definitions.activation import activate_content
from shared.segment_cache import SegmentCache
from shared.segmentation import load_definitions
from shared.segmentation.facts import Interaction
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually
from tests.support.segmenter import History, evaluator, ruleset, seed

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
T0 = NOW - 40 * DAY
SAMPLES = 3
DEFAULT = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
ACTIVITY = """
  activity:
    description: Interactions in the last 30 days.
    segments:
      busy:  interactions_30d >= 5
      some:  interactions_30d >= 1 and interactions_30d < 5
      quiet: interactions_30d < 1
"""


def candidate(*, vip_top_percent: int = 5) -> str:
    """Engagement on 3 days instead of 7, rfm removed, activity added; and, to make the
    population stats differ from the base's, another vip share."""
    content = DEFAULT.replace("days_since_last_interaction < 7", "days_since_last_interaction < 3")
    content = content.replace(
        "days_since_last_interaction >= 7", "days_since_last_interaction >= 3"
    )
    content = content[: content.index("  rfm:")] + content[content.index("  engagement:") :]
    content = content.replace(
        "vip_spend:    {metric: spend_365d, top_percent: 5}",
        f"vip_spend:    {{metric: spend_365d, top_percent: {vip_top_percent}}}",
    )
    return content + ACTIVITY


def histories(n: int) -> tuple[list[History], list[History]]:
    """Each customer's events before T0 and, for some, between T0 and NOW: customers at
    risk or churned at T0 who order again are reactivated at NOW, which only `previous`
    (their stored segment) tells."""
    rng = random.Random(11)
    before, after = [], []
    for i in range(n):
        old, new = History(f"c{i:04d}"), History(f"c{i:04d}")
        for _ in range(rng.choice((0, 1, 1, 2, 4))):
            at = T0 - timedelta(seconds=rng.uniform(60, 400 * 86400))
            old.orders.append((at, Decimal(rng.randrange(100, 40_000)) / 100))
        for _ in range(rng.choice((0, 0, 1, 2, 5))):
            at = T0 - timedelta(seconds=rng.uniform(60, 30 * 86400))
            old.interactions.append(Interaction(at, rng.choice(("page_view", "add_to_cart"))))
        if not old.orders and not old.interactions:
            old.orders.append((T0 - 20 * DAY, Decimal(10)))
        if rng.random() < 0.4:
            at = NOW - timedelta(seconds=rng.uniform(60, 25 * 86400))
            new.orders.append((at, Decimal(rng.randrange(100, 40_000)) / 100))
        for _ in range(rng.choice((0, 0, 1, 3, 6))):
            at = NOW - timedelta(seconds=rng.uniform(60, 39 * 86400))
            new.interactions.append(Interaction(at, rng.choice(("page_view", "add_to_cart"))))
        before.append(old)
        after.append(new)
    return before, after


def merged(before: list[History], after: list[History]) -> list[History]:
    return [
        History(old.customer_id, old.orders + new.orders, old.interactions + new.interactions)
        for old, new in zip(before, after, strict=True)
    ]


# The independent count: the rules of the candidate and the defaults, written out here.
def engagement(h: History, days: int) -> str:
    if not h.interactions:
        return "none"
    age = (NOW - max(i.at for i in h.interactions)) / DAY
    return "engaged" if age < days else "casual" if age < 30 else "dormant"


def activity(h: History) -> str:
    n = sum(1 for i in h.interactions if NOW - i.at < 30 * DAY)
    return "busy" if n >= 5 else "some" if n >= 1 else "quiet"


def value_tiers(hs: list[History], vip_top_percent: int) -> dict[str, str]:
    spend = {
        h.customer_id: sum((a for at, a in h.orders if NOW - at < 365 * DAY), Decimal(0))
        for h in hs
    }
    positive = sorted(s for s in spend.values() if s > 0)

    def cutoff(percent: int) -> Decimal:
        top = max(1, math.ceil(len(positive) * Fraction(percent) / 100))
        return positive[len(positive) - top]

    vip, high, medium = cutoff(vip_top_percent), cutoff(20), cutoff(50)

    def tier(s: Decimal) -> str:
        if s <= 0:
            return "none"
        return "vip" if s >= vip else "high" if s >= high else "medium" if s >= medium else "low"

    return {cid: tier(s) for cid, s in spend.items()}


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


async def evaluated(
    engine: AsyncEngine, cache: SegmentCache, n: int
) -> tuple[Evaluator, list[History]]:
    """n customers seeded and evaluated under the defaults at T0, then again at NOW after
    their later events, with population stats recomputed at each, as the service would do
    at those pinned times. Returns the evaluator at NOW and the customers' whole histories."""
    before, after = histories(n)
    await seed(engine, before, T0)
    rules = await ruleset(engine)
    rules.population_required = True
    for at in (T0, NOW):
        if at == NOW:
            await seed(
                engine, [h for h in after if h.orders or h.interactions], NOW, order_prefix="r"
            )
        await population.recompute(engine, rules, at)
        ev = evaluator(engine, cache, FixedClock(at), rules, batch_size=100)
        while await ev.evaluate_due():
            pass
    return ev, merged(before, after)


async def stored_segments(engine: AsyncEngine) -> dict[tuple[str, str], str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT customer_id, dimension, segment FROM customer_segments")
        )
        return {(r.customer_id, r.dimension): r.segment for r in rows}


async def create(engine: AsyncEngine, content: str, base_version: int) -> str:
    preview_id = str(uuid.uuid4())
    async with pg_connection(engine) as conn:
        await store.create_preview(
            conn,
            preview_id,
            actor="test",
            content=content,
            content_hash=load_definitions(content).content_hash,
            base_version=base_version,
            samples=SAMPLES,
            keep_seconds=3600,
        )
    return preview_id


async def get(engine: AsyncEngine, preview_id: str) -> store.Preview:
    async with pg_connection(engine) as conn:
        found = await store.get_preview(conn, preview_id)
    assert found is not None
    return found


def dimension(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in result["dimensions"] if d["name"] == name)


def cells(dim: dict[str, Any]) -> dict[tuple[str | None, str | None], int]:
    return {(t["from"], t["to"]): t["customers"] for t in dim["transitions"]}


async def test_preview_counts_what_the_seeded_histories_give(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    ev, hs = await evaluated(engine, cache, 400)
    stored = await stored_segments(engine)
    assert "reactivated" in {seg for (_, d), seg in stored.items() if d == "lifecycle"}
    by_id = {h.customer_id: h for h in hs}
    assert all(stored[cid, "engagement"] == engagement(h, 7) for cid, h in by_id.items())

    preview_id = await create(engine, candidate(), ev.ruleset.version)
    runner = PreviewRunner(engine, FixedClock(NOW), chunk=64)
    assert await runner.run_once()
    assert not await runner.run_once()  # nothing else to claim
    job = await get(engine, preview_id)
    assert (job.status, job.error, job.done, job.total) == ("done", None, 400, 400)
    assert job.as_of == NOW
    result = job.result
    assert result is not None
    assert result["as_of"] == NOW.isoformat()
    assert (result["base_version"], result["customers"], result["uncovered"]) == (
        ev.ruleset.version,
        400,
        0,
    )
    assert result["population"]["reused"] is True
    assert result["population"]["cutoffs"] == {
        name: str(value) for name, value in ev.ruleset.population.cutoffs.items()
    }
    assert [(d["name"], d["status"]) for d in result["dimensions"]] == [
        ("lifecycle", "unchanged"),
        ("value_tier", "unchanged"),
        ("engagement", "changed"),
        ("activity", "added"),
        ("rfm", "removed"),
    ]

    moves = Counter((engagement(h, 7), engagement(h, 3)) for h in hs)
    dim = dimension(result, "engagement")
    assert cells(dim) == dict(moves)
    assert {s["name"]: (s["now"], s["candidate"]) for s in dim["segments"]} == {
        s: (
            sum(1 for h in hs if engagement(h, 7) == s),
            sum(1 for h in hs if engagement(h, 3) == s),
        )
        for s in ("engaged", "casual", "dormant", "none")
    }
    moved = sorted(
        h.customer_id for h in hs if (engagement(h, 7), engagement(h, 3)) == ("engaged", "casual")
    )
    assert len(moved) > SAMPLES
    samples = next(t for t in dim["transitions"] if (t["from"], t["to"]) == ("engaged", "casual"))
    assert [s["customer_id"] for s in samples["samples"]] == moved[:SAMPLES]
    for s in samples["samples"]:
        assert "days_since_last_interaction=" in s["reason"]
        assert ">= 3" in s["reason"]
    assert all(t["samples"] == [] for t in dim["transitions"] if t["from"] == t["to"])

    dim = dimension(result, "activity")
    assert cells(dim) == dict(Counter((None, activity(h)) for h in hs))
    for t in dim["transitions"]:
        expected = sorted(h.customer_id for h in hs if activity(h) == t["to"])[:SAMPLES]
        assert [s["customer_id"] for s in t["samples"]] == expected

    rfm_now = Counter(seg for (_, d), seg in stored.items() if d == "rfm")
    dim = dimension(result, "rfm")
    assert cells(dim) == {(seg, None): n for seg, n in rfm_now.items()}
    assert all(s["candidate"] == 0 for s in dim["segments"])
    for t in dim["transitions"]:
        assert all(
            s["reason"] == "dimension 'rfm' is not in the candidate definitions"
            for s in t["samples"]
        )

    for name in ("lifecycle", "value_tier"):
        now = Counter(seg for (_, d), seg in stored.items() if d == name)
        assert cells(dimension(result, name)) == {(seg, seg): n for seg, n in now.items()}
    tiers = Counter(value_tiers(hs, 5).values())
    assert {s["name"]: s["candidate"] for s in dimension(result, "value_tier")["segments"]} == {
        s: tiers[s] for s in ("vip", "high", "medium", "low", "none")
    }


async def activate_and_backfill(engine: AsyncEngine, ev: Evaluator, content: str) -> int:
    """Activate `content`, switch the evaluator's ruleset as the service's follow loop
    does, compute stats if none were copied (as the population loop does), and run the
    backfill to completion at the same pinned time."""
    rules: Ruleset = ev.ruleset
    async with pg_connection(engine) as conn, conn.transaction():
        activated = await activate_content(conn, content, replaces=rules.version, actor="test")
    async with pg_connection(engine) as conn:
        assert await definitions.sync(conn, rules)
    if rules.population_id is None:
        await population.recompute(engine, rules, NOW)
    feeder = BackfillFeeder(
        engine,
        rules,
        FixedClock(NOW),
        SegmenterMetrics(CollectorRegistry()),
        rate_per_second=200,
        interval_seconds=0.5,
    )
    for _ in range(1000):
        did = await feeder.step()
        while await ev.evaluate_due():
            pass
        if did == "completed":
            return activated.version
    raise AssertionError("the backfill did not complete")


@pytest.mark.parametrize("stats", ["reused", "recomputed"])
async def test_activation_does_what_the_preview_predicted(
    engine: AsyncEngine, cache: SegmentCache, stats: str
) -> None:
    ev, hs = await evaluated(engine, cache, 400)
    content = candidate(vip_top_percent=5 if stats == "reused" else 10)
    preview_id = await create(engine, content, ev.ruleset.version)
    assert await PreviewRunner(engine, FixedClock(NOW), chunk=64).run_once()
    result = (await get(engine, preview_id)).result
    assert result is not None
    assert result["population"]["reused"] is (stats == "reused")
    if stats == "recomputed":
        tiers = Counter(value_tiers(hs, 10).values())
        value_tier = dimension(result, "value_tier")
        assert value_tier["status"] == "changed"
        assert {s["name"]: s["candidate"] for s in value_tier["segments"]} == {
            s: tiers[s] for s in ("vip", "high", "medium", "low", "none")
        }

    version = await activate_and_backfill(engine, ev, content)

    assert result["population"]["cutoffs"] == {
        name: str(value) for name, value in ev.ruleset.population.cutoffs.items()
    }
    after = Counter((d, seg) for (_, d), seg in (await stored_segments(engine)).items())
    predicted = Counter(
        {
            (d["name"], s["name"]): s["candidate"]
            for d in result["dimensions"]
            for s in d["segments"]
            if s["candidate"]
        }
    )
    assert after == predicted
    async with pg_connection(engine) as conn:
        moved = {
            (r["dimension"], r["from_segment"], r["to_segment"]): r["n"]
            for r in await store.transition_counts(conn, version)
        }
        assert moved == {
            (d["name"], t["from"], t["to"]): t["customers"]
            for d in result["dimensions"]
            for t in d["transitions"]
            if t["from"] != t["to"]
        }
        for d in result["dimensions"]:
            for t in d["transitions"]:
                for s in t["samples"]:
                    reason = await conn.fetchval(
                        "SELECT reason FROM segment_history WHERE customer_id = $1"
                        " AND dimension = $2 AND to_segment IS NOT DISTINCT FROM $3"
                        " AND definition_version = $4",
                        s["customer_id"],
                        d["name"],
                        t["to"],
                        version,
                    )
                    if t["to"] is None:
                        # Activation names the version the dimension is not in.
                        expected = (
                            f"dimension {d['name']!r} is not in definitions version {version}"
                        )
                    else:
                        expected = s["reason"]
                    assert reason == "new segment definitions; " + expected, (d["name"], s)


async def test_a_cancelled_preview_stops_and_stays_cancelled(
    engine: AsyncEngine, cache: SegmentCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    ev, _ = await evaluated(engine, cache, 200)
    preview_id = await create(engine, candidate(), ev.ruleset.version)
    reads = 0
    load_customers = repo.load_customers

    async def cancelled_after_first_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            async with pg_connection(engine) as conn:
                assert await store.cancel_preview(conn, preview_id) is not None
        return await load_customers(*args, **kwargs)

    monkeypatch.setattr(repo, "load_customers", cancelled_after_first_read)
    runner = PreviewRunner(engine, FixedClock(NOW), chunk=20)
    assert await runner.run_once()
    assert reads == 1  # stopped at the progress write after the first chunk
    job = await get(engine, preview_id)
    assert (job.status, job.result, job.error, job.done) == ("cancelled", None, None, 0)
    assert not await runner.run_once()
    assert (await get(engine, preview_id)).status == "cancelled"


async def test_a_running_preview_is_taken_over_only_once_its_heartbeat_is_stale(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    ev, _ = await evaluated(engine, cache, 100)
    preview_id = await create(engine, candidate(), ev.ruleset.version)
    async with pg_connection(engine) as conn:
        claimed = await store.claim_preview(conn, "elsewhere", 30)
    assert claimed is not None
    assert claimed.id == preview_id

    runner = PreviewRunner(engine, FixedClock(NOW), stale_seconds=30)
    assert not await runner.run_once()
    assert (await get(engine, preview_id)).claimed_by == "elsewhere"

    async with pg_connection(engine) as conn:
        await conn.execute(
            "UPDATE definition_previews SET heartbeat_at = now() - interval '31 seconds'"
        )
    assert await runner.run_once()
    job = await get(engine, preview_id)
    assert (job.status, job.claimed_by) == ("done", runner.worker)
    assert job.result is not None
    assert job.result["customers"] == 100
    async with pg_connection(engine) as conn:
        assert not await store.preview_progress(conn, preview_id, "elsewhere", 1, 100, NOW)


async def test_invalid_content_fails_the_preview_not_the_runner(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    ev, _ = await evaluated(engine, cache, 20)
    broken = DEFAULT.replace("days_since_last_interaction < 7", "days_since_last_interactoin < 7")
    preview_id = str(uuid.uuid4())
    async with pg_connection(engine) as conn:
        await store.create_preview(
            conn,
            preview_id,
            actor="test",
            content=broken,
            content_hash="broken",
            base_version=ev.ruleset.version,
            samples=SAMPLES,
            keep_seconds=3600,
        )
    good = await create(engine, candidate(), ev.ruleset.version)
    runner = PreviewRunner(engine, FixedClock(NOW))
    assert await runner.run_once()
    job = await get(engine, preview_id)
    assert job.status == "failed"
    assert job.result is None
    assert job.error is not None
    assert "days_since_last_interactoin" in job.error
    assert await runner.run_once()
    assert (await get(engine, good)).status == "done"


async def test_a_dropped_connection_is_retried_and_the_result_is_the_same(
    engine: AsyncEngine, cache: SegmentCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    ev, _ = await evaluated(engine, cache, 100)
    runner = PreviewRunner(engine, FixedClock(NOW), chunk=20)
    clean = await create(engine, candidate(), ev.ruleset.version)
    assert await runner.run_once()
    reads = 0
    load_customers = repo.load_customers

    async def drops_the_third_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise ConnectionResetError("connection reset by the test")
        return await load_customers(*args, **kwargs)

    monkeypatch.setattr(repo, "load_customers", drops_the_third_read)
    retried = await create(engine, candidate(), ev.ruleset.version)
    assert await runner.run_once()
    assert reads == 6  # five chunks, one of them twice
    assert (await get(engine, retried)).result == (await get(engine, clean)).result


async def test_the_loop_runs_queued_previews_and_deletes_expired_ones(
    engine: AsyncEngine, cache: SegmentCache
) -> None:
    ev, _ = await evaluated(engine, cache, 20)
    async with pg_connection(engine) as conn:
        await store.create_preview(
            conn,
            str(uuid.uuid4()),
            actor="test",
            content=candidate(),
            content_hash=load_definitions(candidate()).content_hash,
            base_version=ev.ruleset.version,
            samples=SAMPLES,
            keep_seconds=0,
        )
    stopping = asyncio.Event()
    loop = asyncio.create_task(
        PreviewRunner(engine, FixedClock(NOW), poll_seconds=0.05).run(stopping)
    )
    try:
        preview_id = await create(engine, candidate(), ev.ruleset.version)

        async def is_done() -> bool:
            return (await get(engine, preview_id)).status == "done"

        await eventually(is_done, within_seconds=10, message="preview done")
    finally:
        stopping.set()
        await loop
    async with pg_connection(engine) as conn:
        assert await conn.fetchval("SELECT count(*) FROM definition_previews") == 1
