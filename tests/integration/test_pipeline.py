"""The segmenter's own output, served by the API: the contract between the two services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import FixedClock
from shared.segment_cache import SegmentCache
from shared.segmentation.facts import Interaction
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.support.segmenter import History, evaluator, ruleset, seed, segments

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


@pytest.mark.parametrize("source", ["cache", "database"])
async def test_api_serves_what_the_segmenter_wrote(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings, source: str
) -> None:
    shopper = History(
        "shopper-1",
        orders=[(NOW - 40 * DAY, Decimal("30.00")), (NOW - 2 * DAY, Decimal("12.50"))],
        interactions=[Interaction(NOW - DAY, "add_to_cart"), Interaction(NOW - 3 * DAY, "login")],
    )
    await seed(engine, [shopper], NOW)
    cache = SegmentCache(redis, settings.redis_key_prefix)
    ev = evaluator(engine, cache, FixedClock(NOW), await ruleset(engine))
    while await ev.evaluate_due():
        pass
    stored = {d: s for (c, d), s in (await segments(engine)).items() if c == "shopper-1"}
    if source == "database":
        await cache.delete("shopper-1")
    headers = bearer(await make_key(engine, "segments:read"))
    async with running_api(settings) as (_, client):
        r = await client.get("/v1/customers/shopper-1/segments", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == source
    assert {d: v["segment"] for d, v in body["segments"].items()} == stored
    assert body["aggregates"]["order_count"] == 2
    assert body["aggregates"]["interactions_30d"] == 2
    assert all(v["reason"] for v in body["segments"].values())
