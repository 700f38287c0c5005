"""The independent checker: expected aggregates recomputed from the produced events alone.

Deliberately plain Python that shares no code with the ingest worker or its SQL, so a bug
in either shows up as a difference rather than being repeated on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from shared.events import INTERACTION_EVENT_TYPES, Event, OrderPlaced, OrderRefunded
from shared.events.orders import ORDER_EVENT_CLASSES

Q = Decimal("0.0001")


def expected_aggregates(
    events: Iterable[Event], rates: Mapping[str, Decimal], as_of: datetime
) -> dict[str, dict[str, Any]]:
    """Per customer, every aggregate the worker keeps, windows as of `as_of`."""
    seen: set[str] = set()
    placed: dict[tuple[str, str], tuple[datetime, str, Decimal]] = {}
    refunded: dict[tuple[str, str], Decimal] = {}
    cancelled: set[tuple[str, str]] = set()
    interactions: dict[str, list[tuple[datetime, str]]] = {}
    customers: set[str] = set()
    for ev in events:
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        if isinstance(ev, ORDER_EVENT_CLASSES):
            if ev.currency not in rates:
                continue
            customers.add(ev.customer_id)
            key = (ev.customer_id, ev.order_id)
            amount = (ev.amount * rates[ev.currency]).quantize(Q, rounding=ROUND_HALF_EVEN)
            if isinstance(ev, OrderPlaced):
                # The earliest placement wins; at the same time, the smaller event id.
                if key not in placed or (ev.occurred_at, ev.event_id) < placed[key][:2]:
                    placed[key] = (ev.occurred_at, ev.event_id, amount)
            elif isinstance(ev, OrderRefunded):
                refunded[key] = refunded.get(key, Decimal(0)) + amount
            else:
                cancelled.add(key)
        else:
            customers.add(ev.customer_id)
            interactions.setdefault(ev.customer_id, []).append((ev.occurred_at, ev.type))

    out: dict[str, dict[str, Any]] = {}
    for cid in customers:
        orders = [
            (at, max(amount - refunded.get(key, Decimal(0)), Decimal(0)))
            for key, (at, _, amount) in placed.items()
            if key[0] == cid and key not in cancelled
        ]
        inter = interactions.get(cid, [])
        spend = sum((net for _, net in orders), Decimal(0))
        carts = [at for at, kind in inter if kind == "add_to_cart"]
        last_order = max((at for at, _ in orders), default=None)
        last_cart = max(carts, default=None)
        by_type: dict[str, int] = dict.fromkeys(INTERACTION_EVENT_TYPES, 0)
        for _, kind in inter:
            by_type[kind] = by_type.get(kind, 0) + 1

        def window(days: int, rows: list[tuple[datetime, Any]]) -> list[tuple[datetime, Any]]:
            return [r for r in rows if as_of - timedelta(days=days) < r[0] <= as_of]

        out[cid] = {
            "order_count": len(orders),
            "net_spend": spend,
            "first_order_at": min((at for at, _ in orders), default=None),
            "last_order_at": last_order,
            "average_order_value": (spend / len(orders)).quantize(Q) if orders else None,
            "orders_30d": len(window(30, orders)),
            "orders_90d": len(window(90, orders)),
            "orders_365d": len(window(365, orders)),
            "spend_30d": sum((n for _, n in window(30, orders)), Decimal(0)),
            "spend_90d": sum((n for _, n in window(90, orders)), Decimal(0)),
            "spend_365d": sum((n for _, n in window(365, orders)), Decimal(0)),
            "interaction_count": len(inter),
            "interaction_counts": by_type,
            "last_interaction_at": max((at for at, _ in inter), default=None),
            "interactions_7d": len(window(7, inter)),
            "interactions_30d": len(window(30, inter)),
            "open_cart_at": last_cart
            if last_cart is not None and (last_order is None or last_cart > last_order)
            else None,
        }
    return out


def differences(expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Any]) -> list[str]:
    """Readable differences between expected dicts and the worker's aggregates."""
    problems = []
    for cid in sorted(set(expected) | set(actual)):
        if cid not in actual:
            problems.append(f"{cid}: missing from the database")
            continue
        if cid not in expected:
            problems.append(f"{cid}: in the database but no accepted event names it")
            continue
        for name, want in expected[cid].items():
            got = getattr(actual[cid], name)
            if got != want:
                problems.append(f"{cid}.{name}: expected {want!r}, got {got!r}")
    return problems
