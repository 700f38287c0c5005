"""Declared event metrics end to end: events through ingest's batch code, the segmenter's
evaluation through the read model, and the customer read from the cache and from the
database, which must agree for every kind of metric."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import SystemClock
from shared.events.interactions import EmailClick, Login
from shared.events.orders import LineItem, OrderPlaced, OrderRefunded
from shared.segment_cache import SegmentCache, customer_key
from shared.segmentation import load_definitions
from shared.segmentation.loader import default_definitions
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.integration.test_facts_read_model import apply_through_ingest
from tests.support.segmenter import evaluator, ruleset

pytestmark = pytest.mark.integration

METRICS_YAML = """
metrics:
  email_clicks_14d:  {count: email_click, within: 14d}
  running_spend_90d: {sum: amount, where: "item.category = 'running'", within: 90d}
  app_orders_365d:   {count: order_placed, where: "channel = 'app'", within: 365d}
  running_items:     {sum: quantity, where: "item.category = 'running'"}
  skus_bought:       {distinct: item.sku, of: order_placed}
  campaigns_7d:      {distinct: campaign, of: interaction, within: 7d}
  last_login:        {last: login, within: 30d}
  first_click:       {first: email_click}
"""


def definitions_text() -> str:
    return default_definitions().source + METRICS_YAML


def with_dimension(text: str) -> str:
    return text.replace(
        "\ndimensions:\n",
        """
dimensions:
  runners:
    segments:
      keen:   running_spend_90d >= 100 or email_clicks_14d >= 3
      casual: running_spend_90d < 100 and email_clicks_14d < 3
""",
        1,
    )


def placed(cid: str, order_id: str, at: datetime, amount: str, channel: str, *lines: Any) -> Any:
    return OrderPlaced(
        event_id=str(uuid.uuid4()),
        customer_id=cid,
        order_id=order_id,
        occurred_at=at,
        amount=Decimal(amount),
        currency="EUR",
        channel=channel,
        items=tuple(
            LineItem(sku=sku, quantity=q, unit_price=Decimal(p), category=cat)
            for sku, q, p, cat in lines
        ),
    )


async def test_cache_and_database_agree_on_every_kind_of_metric(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings
) -> None:
    definitions = load_definitions(with_dimension(definitions_text()))
    now = datetime.now(UTC)
    # Away from any window's edge, so that the seconds between the two reads move nothing.
    day = timedelta(days=1)
    half = timedelta(hours=12)
    events = [
        placed("c-1", "o1", now - 3 * day - half, "80", "app", ("s1", 2, "30", "running")),
        placed("c-1", "o2", now - 40 * day - half, "55", "web", ("s2", 1, "55", "hiking")),
        placed("c-1", "o3", now - 100 * day - half, "20", "app", ("s1", 1, "20", "running")),
        OrderRefunded(
            event_id=str(uuid.uuid4()),
            customer_id="c-1",
            order_id="o1",
            occurred_at=now - 2 * day,
            amount=Decimal("10"),
            currency="EUR",
        ),
        *(
            EmailClick(
                event_id=str(uuid.uuid4()),
                customer_id="c-1",
                occurred_at=now - (k + 1) * day - half,
                properties={"campaign": f"bf{k % 2}"},
            )
            for k in range(4)
        ),
        Login(event_id=str(uuid.uuid4()), customer_id="c-1", occurred_at=now - 5 * day - half),
        placed("c-2", "o9", now - half, "12", "web"),
    ]
    await apply_through_ingest(engine, events, now)
    rules = await ruleset(engine, definitions=definitions)
    cache = SegmentCache(redis, settings.redis_key_prefix)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO segmentation_queue (customer_id, due_at)"
                " SELECT customer_id, now() FROM customer_aggregates"
            )
        )
    worker = evaluator(engine, cache, SystemClock(), rules)
    assert await worker.evaluate_due() == 2

    reader = bearer(await make_key(engine, "segments:read"))
    async with running_api(settings) as (_, client):
        cached = (await client.get("/v1/customers/c-1/segments", headers=reader)).json()
        await redis.delete(customer_key(settings.redis_key_prefix, "c-1"))
        stored = (await client.get("/v1/customers/c-1/segments", headers=reader)).json()

    assert (cached["source"], stored["source"]) == ("cache", "database")
    metrics = cached["aggregates"]["metrics"]
    assert metrics == stored["aggregates"]["metrics"]
    assert metrics["email_clicks_14d"] == 4
    # o1's running line (2 x 30) within 90 days; o3's is older; the refund is the order's.
    assert Decimal(metrics["running_spend_90d"]) == Decimal(60)
    assert metrics["app_orders_365d"] == 2
    assert metrics["running_items"] == 3
    assert metrics["skus_bought"] == 2
    assert metrics["campaigns_7d"] == 2
    assert datetime.fromisoformat(metrics["last_login"]) == now - 5 * day - half
    assert datetime.fromisoformat(metrics["first_click"]) == now - 4 * day - half
    for name in ("spend_365d", "orders_365d", "interactions_30d", "net_spend", "order_count"):
        assert cached["aggregates"][name] == stored["aggregates"][name], name
    assert cached["segments"]["runners"]["segment"] == "keen"
    assert cached["segments"] == stored["segments"]
