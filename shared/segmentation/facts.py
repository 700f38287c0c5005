"""The plain values the segmentation core works on: customer facts and assignments."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from shared.segmentation.events import (
    BUILT_IN_EVENT_METRICS,
    Contribution,
    EventMetric,
    EventSource,
    InteractionRow,
    MetricKind,
    OrderRow,
    interaction_contribution,
    order_contribution,
)
from shared.segmentation.traits import TraitValue

Measure = Decimal | int
ZERO = Decimal(0)


class OrderFact(NamedTuple):
    """One order that was not cancelled; `net_amount` is net of refunds, in base currency."""

    placed_at: datetime
    net_amount: Decimal


@dataclass(frozen=True, slots=True)
class WindowFacts:
    """A windowed count, sum or distinct count at the facts' `as_of`: its exact `value`,
    and the newest of the events inside the window, newest first, each with what it
    counts for (for a distinct count: each value once, at its latest event, for 1).

    `head` either holds every event inside the window (`complete`), or enough of the
    newest that their own total is above every threshold the metric is compared with:
    older events leave the window first, so no exit before the head's can move the value
    across one. That is what keeps a busy customer's evaluation as cheap as a new one's."""

    value: Measure
    head: tuple[tuple[datetime, Measure], ...]
    complete: bool


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """Everything the core knows about one customer, as of `as_of` (the evaluation time).

    Lifetime totals come from the aggregates ingest keeps. `events` holds the value of
    every event metric the definitions use (built-in windows and declared metrics): counts,
    sums, distinct counts, and first or last times as datetimes (None: no such event).
    `windows` holds the windowed ones' exits; `counted_since`, for metrics over events that
    ingest does not keep forever, the time of the oldest event they can count.
    """

    customer_id: str
    order_count: int
    net_spend: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    interaction_count: int
    interaction_counts_by_type: Mapping[str, int]
    last_interaction_at: datetime | None
    last_cart_at: datetime | None
    as_of: datetime | None = None
    events: Mapping[str, Any] = field(default_factory=dict)
    windows: Mapping[str, WindowFacts] = field(default_factory=dict)
    traits: Mapping[str, TraitValue] = field(default_factory=dict)
    counted_since: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A customer's current segment in one dimension and when it was entered."""

    segment: str
    since: datetime


@dataclass(frozen=True, slots=True)
class Interaction:
    """One interaction event, for `build_facts`."""

    at: datetime
    type: str = "page_view"
    properties: Mapping[str, Any] = field(default_factory=dict)


def build_facts(
    customer_id: str,
    now: datetime,
    orders: Iterable[OrderFact | OrderRow] = (),
    interactions: Iterable[Interaction] = (),
    last_cart_at: datetime | None = None,
    *,
    metrics: Iterable[EventMetric] = (),
    traits: Mapping[str, TraitValue] | None = None,
) -> CustomerFacts:
    """Consistent `CustomerFacts` at `now` from a full event history: the reference the
    read model is tested against, and the input of tests, previews of samples and
    validation. Every built-in event metric is computed, and `metrics` besides.

    `last_cart_at` is kept only if no order was placed at or after it, as the service does.
    """
    rows = [_as_row(order, index) for index, order in enumerate(orders)]
    counted = sorted(
        (
            r
            for r in rows
            if r.placed_at is not None and r.amount is not None and r.cancelled_at is None
        ),
        key=lambda r: r.placed_at or now,
    )
    all_interactions = sorted(interactions, key=lambda interaction: interaction.at)
    last_order_at = counted[-1].placed_at if counted else None
    if last_cart_at is not None and last_order_at is not None and last_order_at >= last_cart_at:
        last_cart_at = None
    wanted = {**BUILT_IN_EVENT_METRICS, **{metric.name: metric for metric in metrics}}
    events: dict[str, Any] = {}
    windows: dict[str, WindowFacts] = {}
    for name, metric in wanted.items():
        contributions = _contributions(metric, rows, all_interactions, now)
        value, window = reference_value(metric, contributions, now)
        events[name] = value
        if window is not None:
            windows[name] = window
    return CustomerFacts(
        customer_id=customer_id,
        order_count=len(counted),
        net_spend=sum((max((r.amount or ZERO) - r.refunded, ZERO) for r in counted), ZERO),
        first_order_at=counted[0].placed_at if counted else None,
        last_order_at=last_order_at,
        interaction_count=len(all_interactions),
        interaction_counts_by_type=dict(Counter(i.type for i in all_interactions)),
        last_interaction_at=all_interactions[-1].at if all_interactions else None,
        last_cart_at=last_cart_at,
        as_of=now,
        events=events,
        windows=windows,
        traits=dict(traits or {}),
    )


def _as_row(order: OrderFact | OrderRow, index: int) -> OrderRow:
    if isinstance(order, OrderRow):
        return order
    zero = Decimal(0)
    return OrderRow(f"o{index}", order.placed_at, order.net_amount, zero, None, None, None, ())


def _contributions(
    metric: EventMetric,
    orders: Sequence[OrderRow],
    interactions: Sequence[Interaction],
    now: datetime,
) -> list[Contribution]:
    distinct = (metric.field,) if metric.kind is MetricKind.DISTINCT and metric.field else ()
    found: list[Contribution | None]
    if metric.filter.source is EventSource.ORDERS:
        found = [order_contribution(metric.filter, order, distinct) for order in orders]
    else:
        found = [
            interaction_contribution(
                metric.filter, InteractionRow(i.at, i.type, i.properties), distinct
            )
            for i in interactions
        ]
    return sorted((c for c in found if c is not None and c.at <= now), key=lambda c: c.at)


def reference_value(
    metric: EventMetric, contributions: Sequence[Contribution], now: datetime
) -> tuple[Any, WindowFacts | None]:
    """A metric's value at `now` from every contribution at or before it, oldest first,
    and for a windowed count, sum or distinct count its complete `WindowFacts`."""
    inside = [c for c in contributions if metric.window is None or c.at > now - metric.window]
    if metric.kind is MetricKind.FIRST:
        return (inside[0].at if inside else None), None
    if metric.kind is MetricKind.LAST:
        return (inside[-1].at if inside else None), None
    if metric.kind is MetricKind.DISTINCT:
        assert metric.field is not None
        latest: dict[str, datetime] = {}
        for c in inside:
            for value in c.values.get(metric.field, ()):
                latest[value] = c.at
        head = tuple(sorted(((at, 1) for at in latest.values()), reverse=True))
        window = WindowFacts(len(latest), head, True) if metric.window is not None else None
        return len(latest), window
    measures = [(c.at, c.measure(metric)) for c in inside]
    zero: Measure = Decimal(0) if metric.kind is MetricKind.SUM and metric.field == "amount" else 0
    total = sum((m for _, m in measures), zero)
    if metric.window is None:
        return total, None
    return total, WindowFacts(total, tuple(reversed(measures)), True)
