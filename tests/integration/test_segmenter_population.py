"""Population statistics in a running segmenter: a cold start resolves them promptly."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import definitions, population
from services.segmenter.settings import SegmenterSettings
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.segmentation import load_definitions
from tests.conftest import ROOT, MakeTopic, eventually
from tests.support.segmenter import History, ruleset, run_segmenter, scalar, seed, segments
from tests.support.value_tiers import expected_value_tiers, spenders

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


async def test_a_cold_start_resolves_the_cut_offs_for_the_customers_as_they_arrive(
    engine: AsyncEngine, service_env: dict[str, str], make_topic: MakeTopic, tmp_path: Path
) -> None:
    log = tmp_path / "segmenter.log"
    env = service_env | {
        "STREAMSEG_SEGMENTER_CLOCK": f"fixed:{NOW.isoformat()}",
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": await make_topic("changes", partitions=4),
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "STREAMSEG_LOG_JSON": "false",
    }
    proc = run_segmenter(env, log)
    try:
        # The statistics of the empty population the segmenter starts with: every cut-off
        # unresolved, so a customer evaluated under them is "low" whatever they spent.
        async def has_stats() -> bool:
            assert proc.poll() is None, log.read_text()
            return bool(await scalar(engine, "SELECT count(*) FROM population_stats") > 0)

        await eventually(has_stats, within_seconds=30, message="the first statistics")
        assert await scalar(engine, "SELECT max(customers) FROM population_stats") == 0

        histories, spend = spenders(1000, 11, NOW)
        await seed(engine, histories, NOW)
        expected = expected_value_tiers(spend)
        # The test's own count, not the service's: vip 5%, high 20%, medium 50% (by ceil)
        # of the customers with a positive spend, the rest of those low.
        positive = sum(1 for s in spend.values() if s > 0)

        def top(percent: int) -> int:
            return math.ceil(Fraction(positive * percent, 100))

        assert Counter(expected.values()) == {
            "vip": top(5),
            "high": top(20) - top(5),
            "medium": top(50) - top(20),
            "low": positive - top(50),
            "none": len(spend) - positive,
        }

        async def tiers_follow_the_spends() -> bool:
            assert proc.poll() is None, log.read_text()
            stored = await segments(engine)
            return {c: stored.get((c, "value_tier")) for c in expected} == expected

        await eventually(tiers_follow_the_spends, within_seconds=60, message="value tiers")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    # Recomputed as the population arrived, not on the 300-second schedule.
    assert await scalar(engine, "SELECT max(customers) FROM population_stats") == 1000


async def test_the_loop_follows_growth_and_a_switch_to_a_version_without_stats(
    engine: AsyncEngine,
) -> None:
    base = [History(f"s{i:03d}", orders=[(NOW - 10 * DAY, Decimal(i + 1))]) for i in range(100)]
    await seed(engine, base, NOW)
    rules = await ruleset(engine)
    settings = SegmenterSettings(stats_refresh_seconds=0.05, population_min_interval_seconds=0.2)
    stopping = asyncio.Event()
    loop = asyncio.create_task(
        population.population_loop(engine, rules, FixedClock(NOW), settings, stopping)
    )

    async def stats_of(version: int, customers: int) -> bool:
        assert not loop.done()
        found = await scalar(
            engine,
            "SELECT count(*) FROM population_stats"
            " WHERE definition_version = :v AND customers = :n",
            v=version,
            n=customers,
        )
        return bool(found) and rules.version == version

    try:
        await eventually(lambda: stats_of(rules.version, 100), message="stats at start")
        assert rules.population.cutoffs["vip_spend"] == Decimal(96)
        # 25% more customers: recomputed within the minimum interval, not at 300 s.
        await seed(
            engine,
            [History(f"t{i:03d}", orders=[(NOW - DAY, Decimal(1000))]) for i in range(25)],
            NOW,
        )
        await eventually(lambda: stats_of(rules.version, 125), message="stats after growth")
        assert rules.population.cutoffs["vip_spend"] == Decimal(1000)

        # Another version, activated without copying stats: the loop sees the switch and
        # computes its first stats at once.
        text_ = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
        text_ = text_.replace("top_percent: 50}", "top_percent: 80}")
        async with pg_connection(engine) as conn, conn.transaction():
            stored = await store.activate(
                conn,
                text_,
                load_definitions(text_).content_hash,
                replaces=rules.version,
                actor="test",
                note="",
                publish="each",
                changed_dimensions=["value_tier"],
                customers=125,
                copy_population=False,
            )
        async with pg_connection(engine) as conn:
            assert await definitions.sync(conn, rules)
        assert rules.population_id is None
        await eventually(lambda: stats_of(stored.version, 125), message="stats of the new version")
        # The top 80% of 125 is 100 customers: all but s000 to s024, who spent 1 to 25.
        assert rules.population.cutoffs["medium_spend"] == Decimal(26)
    finally:
        stopping.set()
        await loop
