"""The plain values the segmentation core works on: customer facts and assignments."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

RECENT_ORDERS_DAYS = 365
RECENT_INTERACTIONS_DAYS = 30


class OrderFact(NamedTuple):
    """One order that was not cancelled; `net_amount` is net of refunds, in base currency.

    A named tuple rather than a frozen dataclass: a busy customer has thousands, built at
    every evaluation, and `_make` builds one in half the time."""

    placed_at: datetime
    net_amount: Decimal


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """Everything the core knows about one customer, as of the evaluation time.

    `recent_orders` holds every non-cancelled order placed in the 365 days before the
    evaluation time and `recent_interactions` every interaction in the last 30 days;
    older events only count in the lifetime totals.
    """

    customer_id: str
    order_count: int
    net_spend: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    recent_orders: tuple[OrderFact, ...]
    interaction_count: int
    interaction_counts_by_type: Mapping[str, int]
    last_interaction_at: datetime | None
    recent_interactions: tuple[datetime, ...]
    last_cart_at: datetime | None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A customer's current segment in one dimension and when it was entered."""

    segment: str
    since: datetime


@dataclass(frozen=True, slots=True)
class Interaction:
    """One interaction event, for `build_facts`."""

    at: datetime
    type: str = field(default="page_view")


def build_facts(
    customer_id: str,
    now: datetime,
    orders: Iterable[OrderFact] = (),
    interactions: Iterable[Interaction] = (),
    last_cart_at: datetime | None = None,
) -> CustomerFacts:
    """Build consistent `CustomerFacts` from a full event history (tests, previews, validation).

    `last_cart_at` is kept only if no order was placed at or after it, as the service does.
    """
    all_orders = sorted(orders, key=lambda order: order.placed_at)
    all_interactions = sorted(interactions, key=lambda interaction: interaction.at)
    order_horizon = now - timedelta(days=RECENT_ORDERS_DAYS)
    interaction_horizon = now - timedelta(days=RECENT_INTERACTIONS_DAYS)
    last_order_at = all_orders[-1].placed_at if all_orders else None
    if last_cart_at is not None and last_order_at is not None and last_order_at >= last_cart_at:
        last_cart_at = None
    return CustomerFacts(
        customer_id=customer_id,
        order_count=len(all_orders),
        net_spend=sum((order.net_amount for order in all_orders), Decimal(0)),
        first_order_at=all_orders[0].placed_at if all_orders else None,
        last_order_at=last_order_at,
        recent_orders=tuple(order for order in all_orders if order.placed_at > order_horizon),
        interaction_count=len(all_interactions),
        interaction_counts_by_type=dict(Counter(i.type for i in all_interactions)),
        last_interaction_at=all_interactions[-1].at if all_interactions else None,
        recent_interactions=tuple(i.at for i in all_interactions if i.at > interaction_horizon),
        last_cart_at=last_cart_at,
    )
