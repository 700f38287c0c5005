"""Population statistics in a running segmenter: a cold start resolves them promptly."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MakeTopic, eventually
from tests.support.segmenter import History, run_segmenter, scalar, seed, segments
from tests.support.value_tiers import expected_value_tiers

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def spenders(n: int, seed_: int) -> tuple[list[History], dict[str, Decimal]]:
    """`n` customers with one to three orders of log-normal amounts; one in ten ordered only
    more than a year ago (no spend_365d). Returns them and their spend_365d."""
    rng = random.Random(seed_)
    histories, spend = [], {}
    for i in range(n):
        lapsed = rng.random() < 0.1
        h = History(f"c{i:05d}")
        for _ in range(rng.randint(1, 3)):
            age = rng.uniform(400, 600) if lapsed else rng.uniform(1, 300)
            amount = Decimal(round(rng.lognormvariate(4, 1) * 100) + 1) / 100
            h.orders.append((NOW - age * DAY, amount))
        histories.append(h)
        spend[h.customer_id] = sum(
            (amount for at, amount in h.orders if NOW - at < 365 * DAY), Decimal(0)
        )
    return histories, spend


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

        histories, spend = spenders(1000, 11)
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
