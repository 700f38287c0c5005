"""The read model against an independent computation from the raw events.

Events go in through ingest's own batch code (build_changes, then its statements), in
batches whose events arrive late and out of order, with refunds, cancellations and
duplicate placements of earlier orders. After each batch the read model folds the changes
in at a later instant, as the evaluator does, and every event metric must equal what
`build_facts` computes from the full history at that instant.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as ingest
from services.ingest.batch import build_changes
from shared.db.engine import pg_connection
from shared.events.interactions import EmailClick, Login, PageView
from shared.events.orders import LineItem, OrderCancelled, OrderPlaced, OrderRefunded
from shared.facts import FactsPlan, read_facts, reader, write_fold
from shared.segmentation.conditions import Compare, IsIn
from shared.segmentation.events import (
    BUILT_IN_EVENT_METRICS,
    EventFilter,
    EventMetric,
    EventSource,
    MetricKind,
    OrderRow,
)
from shared.segmentation.facts import Interaction, build_facts
from shared.segmentation.timeline import Timeline

START = datetime(2025, 1, 1, tzinfo=UTC)
RATES = {"EUR": Decimal(1), "USD": Decimal("0.9")}
APP = EventFilter(
    EventSource.ORDERS,
    frozenset({"order_placed"}),
    Compare("channel", "=", "app"),
    "channel = 'app'",
)
RUNNING = EventFilter(
    EventSource.ORDERS,
    frozenset({"order_placed"}),
    Compare("item.category", "=", "running"),
    "item.category = 'running'",
    uses_items=True,
)
BLACK_FRIDAY = EventFilter(
    EventSource.INTERACTIONS,
    frozenset({"email_click", "page_view"}),
    IsIn("campaign", ("bf", "cm"), False),
    "campaign in [bf, cm]",
)
CLICKS = EventFilter(EventSource.INTERACTIONS, frozenset({"email_click"}))
LOGINS = EventFilter(EventSource.INTERACTIONS, frozenset({"login"}))
DAYS = timedelta(days=1)
DECLARED = {
    m.name: m
    for m in (
        EventMetric("email_clicks_14d", MetricKind.COUNT, CLICKS, None, 14 * DAYS),
        EventMetric("app_spend_90d", MetricKind.SUM, APP, "amount", 90 * DAYS),
        EventMetric("app_orders", MetricKind.COUNT, APP, None, None),
        EventMetric("running_spend_30d", MetricKind.SUM, RUNNING, "amount", 30 * DAYS),
        EventMetric("running_items_12h", MetricKind.SUM, RUNNING, "quantity", timedelta(hours=12)),
        EventMetric(
            "skus",
            MetricKind.DISTINCT,
            BUILT_IN_EVENT_METRICS["orders_30d"].filter,
            "item.sku",
            None,
        ),
        EventMetric("running_skus_30d", MetricKind.DISTINCT, RUNNING, "item.sku", 30 * DAYS),
        EventMetric("campaign_touches", MetricKind.COUNT, BLACK_FRIDAY, None, None),
        EventMetric("campaigns_7d", MetricKind.DISTINCT, BLACK_FRIDAY, "campaign", 7 * DAYS),
        EventMetric("last_login_7d", MetricKind.LAST, LOGINS, None, 7 * DAYS),
        EventMetric("first_click", MetricKind.FIRST, CLICKS, None, None),
        EventMetric("last_app_order", MetricKind.LAST, APP, None, None),
    )
}
METRICS = {**BUILT_IN_EVENT_METRICS, **DECLARED}


class Shop:
    """Random events for a few customers, and the full history the reference reads."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.orders: dict[tuple[str, str], dict[str, Any]] = {}
        self.interactions: dict[str, list[Interaction]] = {}
        self.customers = [f"c{i}" for i in range(4)]

    def batch(self, now: datetime) -> list[Any]:
        rng, events = self.rng, []
        for _ in range(rng.randint(1, 25)):
            cid = rng.choice(self.customers)
            # Mostly recent, some late by days, a few far in the past.
            at = now - timedelta(seconds=rng.choice([0, 30, 3600, 86400 * 3, 86400 * 40]))
            at -= timedelta(microseconds=rng.randint(0, 10**6))
            kind = rng.random()
            known = [k for k in self.orders if k[0] == cid]
            if kind < 0.35 or not known:
                order_id = f"o{len(self.orders)}-{rng.randint(0, 9)}"
                events.append(self._placed(cid, order_id, at))
            elif kind < 0.45:
                events.append(self._placed(cid, rng.choice(known)[1], at))  # a duplicate id
            elif kind < 0.55:
                cid, order_id = rng.choice(known)
                amount = Decimal(rng.randint(1, 3000)) / 100
                events.append(self._order(OrderRefunded, cid, order_id, at, amount))
            elif kind < 0.6:
                cid, order_id = rng.choice(known)
                events.append(self._order(OrderCancelled, cid, order_id, at, Decimal(0)))
            else:
                events.append(self._interaction(cid, at))
        return events

    def _order(self, cls: Any, cid: str, order_id: str, at: datetime, amount: Decimal) -> Any:
        return cls(
            event_id=str(uuid.uuid4()),
            customer_id=cid,
            order_id=order_id,
            occurred_at=at,
            amount=amount,
            currency="EUR",
        )

    def _placed(self, cid: str, order_id: str, at: datetime) -> OrderPlaced:
        rng = self.rng
        items = tuple(
            LineItem(
                sku=f"sku{rng.randint(0, 6)}",
                quantity=rng.randint(1, 3),
                unit_price=Decimal(rng.randint(100, 9000)) / 100,
                category=rng.choice(["running", "hiking", None]),
            )
            for _ in range(rng.randint(0, 3))
        )
        return OrderPlaced(
            event_id=str(uuid.uuid4()),
            customer_id=cid,
            order_id=order_id,
            occurred_at=at,
            amount=Decimal(rng.randint(0, 20000)) / 100,
            currency=rng.choice(["EUR", "USD"]),
            items=items,
            channel=rng.choice(["app", "web", None]),
        )

    def _interaction(self, cid: str, at: datetime) -> Any:
        cls = self.rng.choice([EmailClick, Login, PageView])
        properties: dict[str, Any] = (
            {"campaign": self.rng.choice(["bf", "cm", "x"])} if self.rng.random() < 0.6 else {}
        )
        return cls(
            event_id=str(uuid.uuid4()), customer_id=cid, occurred_at=at, properties=properties
        )

    def apply(self, events: list[Any]) -> None:
        """The merge rules of ingest, written again here from the contract."""
        for ev in events:
            if ev.type in ("order_placed", "order_refunded", "order_cancelled"):
                row = self.orders.setdefault(
                    (ev.customer_id, ev.order_id),
                    {"placed": None, "refunded": Decimal(0), "cancelled": None},
                )
                rate = RATES[ev.currency]
                amount = (ev.amount * rate).quantize(Decimal("0.0001"))
                if ev.type == "order_placed":
                    key = (ev.occurred_at, ev.event_id)
                    if row["placed"] is None or key < row["placed"][0]:
                        items = [
                            {
                                "sku": i.sku,
                                "category": i.category,
                                "quantity": i.quantity,
                                "unit_price": str(
                                    (i.unit_price * rate).quantize(Decimal("0.0001"))
                                ),
                            }
                            for i in ev.items
                        ]
                        row["placed"] = (key, amount, ev.channel, ev.currency, items)
                elif ev.type == "order_refunded":
                    row["refunded"] += amount
                elif row["cancelled"] is None or ev.occurred_at < row["cancelled"]:
                    row["cancelled"] = ev.occurred_at
            else:
                self.interactions.setdefault(ev.customer_id, []).append(
                    Interaction(ev.occurred_at, ev.type, dict(ev.properties))
                )

    def reference(self, cid: str, now: datetime) -> dict[str, Any]:
        rows = []
        for (c, order_id), row in self.orders.items():
            if c != cid:
                continue
            placed = row["placed"]
            rows.append(
                OrderRow(
                    order_id,
                    None if placed is None else placed[0][0],
                    None if placed is None else placed[1],
                    row["refunded"],
                    row["cancelled"],
                    None if placed is None else placed[2],
                    None if placed is None else placed[3],
                    () if placed is None else placed[4],
                )
            )
        facts = build_facts(
            cid, now, rows, self.interactions.get(cid, []), metrics=DECLARED.values()
        )
        return dict(facts.events)


async def apply_through_ingest(
    engine: AsyncEngine, events: list[Any], now: datetime, *, queue: bool = False
) -> None:
    """One ingest batch of `events`, with ingest's own statements (and its queue rows)."""
    changes = build_changes(events, RATES, now - timedelta(days=365 * 5))
    async with pg_connection(engine) as conn, conn.transaction():
        await ingest.insert_interactions(conn, changes.window_rows, changes.pending)
        await ingest.apply_batch(conn, changes.statements)
        await ingest.merge_traits(conn, changes.traits)
        if queue:
            await ingest.mark_with_args(conn, changes.queue_args, now)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_folded_metrics_equal_the_full_history(
    engine: AsyncEngine, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small head limit, so that heads read again past it are exercised too.
    monkeypatch.setattr(reader, "HEAD_ROWS", 2)
    rng = random.Random(seed)
    shop = Shop(rng)
    tops = {name: Decimal(rng.randint(0, 400)) for name, m in METRICS.items() if m.window}
    plan = FactsPlan(METRICS, tops)
    now = START
    for step in range(24):
        events = shop.batch(now)
        shop.apply(events)
        await apply_through_ingest(engine, events, now)
        # Evaluated a while later: windows move on between reads, days on some steps.
        now += timedelta(seconds=rng.choice([1, 600, 86400, 86400 * 9]))
        async with pg_connection(engine) as conn:
            read = await read_facts(conn, shop.customers, now, plan)
            if step % 3 != 2:  # sometimes read without folding, as previews do
                async with conn.transaction():
                    await write_fold(conn, read.fold)
        for cid, facts in read.facts.items():
            expected = shop.reference(cid, now)
            assert dict(facts.events) == expected, (step, cid)
            # Of the same types too: a count read back as a Decimal compares equal, but
            # encodes as text in the cached document.
            assert {n: type(v) for n, v in facts.events.items()} == {
                n: type(v) for n, v in expected.items()
            }
            # The windows' heads give the same values ahead, as far as the thresholds go.
            later = now + timedelta(days=rng.choice([1, 8, 31]))
            ahead: dict[str, Any] = Timeline(facts, METRICS).metrics(later)
            reference_later = shop.reference(cid, later)
            for name, window in facts.windows.items():
                top = tops[name]
                if window.complete or reference_later[name] <= top:
                    assert ahead[name] == reference_later[name] or (
                        ahead[name] > top and reference_later[name] > top
                    ), (step, cid, name)
                else:
                    assert ahead[name] > top, (step, cid, name)
