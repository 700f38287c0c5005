"""Event metrics: what a customer did, counted over events filtered by type and properties.

A metric declared in the definitions (`metrics:`), such as
`{count: email_click, within: 14d}` or
`{sum: amount, of: order_placed, where: "item.category = 'running'", within: 90d}`, is an
`EventMetric`: a kind (count, sum, distinct count, first or last time), an `EventFilter`
(a source, event types and a `where` condition over the event's properties), the field it
sums or counts distinct values of, and a window (None: the customer's whole lifetime).

The built-in rolling windows (orders_30d, spend_365d, interactions_7d, ...) are event
metrics too (`BUILT_IN_EVENT_METRICS`), so every window is computed one way, by the read
model in shared/facts.

`contribution` is the one definition of what an event adds to a metric: the read model
applies it to each new event, once, and keeps the result, so that nothing later has to
read the customer's older events again.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.segmentation.conditions import Condition

ZERO = Decimal(0)


class EventSource(enum.StrEnum):
    ORDERS = "orders"
    INTERACTIONS = "interactions"


class MetricKind(enum.StrEnum):
    COUNT = "count"
    SUM = "sum"
    DISTINCT = "distinct"
    FIRST = "first"
    LAST = "last"


# Properties of an order a `where` can test; item.* are tested line by line.
ORDER_PROPERTIES = frozenset({"channel", "currency"})
ITEM_PROPERTIES = frozenset({"item.sku", "item.category"})
SUM_FIELDS = frozenset({"amount", "quantity"})


class _Props(Mapping[str, Any]):
    """An event's properties for a compiled `where`: a missing property reads as null, and
    so does a value of another type than the one the condition tests it as (a string
    where it compares a number), as a comparison with null is false."""

    __slots__ = ("_data", "_types")

    def __init__(self, data: Mapping[str, Any], types: Mapping[str, str]) -> None:
        self._data = data
        self._types = types

    def __getitem__(self, key: str) -> Any:
        value = self._data.get(key)
        wanted = self._types.get(key)
        if value is None or wanted is None or _kind_of(value) == wanted:
            return value
        return None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float | Decimal):
        return "number"
    return "other"


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a metric reads. `types` empty: every interaction type. For orders the
    only type is order_placed: an order counts while it is placed and not cancelled."""

    source: EventSource
    types: frozenset[str]
    where: Condition | None = None
    where_source: str = ""  # the condition as written (normalised spaces): part of the key
    uses_items: bool = False  # `where` reads item.*: the order matches through its lines
    key: str = dataclasses.field(init=False)
    _predicate: Callable[[Mapping[str, Any]], bool] | None = dataclasses.field(
        init=False, repr=False, compare=False
    )
    _types: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = _short_hash(self.source, ",".join(sorted(self.types)), self.where_source)
        object.__setattr__(self, "key", key)
        predicate = None
        types: dict[str, str] = {}
        if self.where is not None:
            from shared.segmentation.conditions import compile_condition, property_types

            predicate = compile_condition(self.where)
            types = {name: str(type_) for name, type_ in property_types(self.where).items()}
        object.__setattr__(self, "_predicate", predicate)
        object.__setattr__(self, "_types", types)

    def matches(self, properties: Mapping[str, Any]) -> bool:
        return self._predicate is None or self._predicate(_Props(properties, self._types))


@dataclass(frozen=True, slots=True)
class EventMetric:
    """A metric over events. `field`: for sum, "amount" or "quantity"; for distinct, the
    property whose distinct values are counted. `window`: events strictly younger than it
    count (None: every event kept)."""

    name: str
    kind: MetricKind
    filter: EventFilter
    field: str | None
    window: timedelta | None
    description: str = ""
    key: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        window = "" if self.window is None else str(self.window // timedelta(microseconds=1))
        key = _short_hash(self.kind, self.filter.key, self.field or "", window)
        object.__setattr__(self, "key", key)

    @property
    def is_windowed_total(self) -> bool:
        """A count or sum over a window: kept as a running value that events leave."""
        return self.window is not None and self.kind in (MetricKind.COUNT, MetricKind.SUM)


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one event adds under one filter: at `at`, one event, `amount` and `quantity`
    (for sums) and the distinct `values` it carries for each field distinct metrics read."""

    at: datetime
    amount: Decimal
    quantity: int
    values: Mapping[str, tuple[str, ...]]

    def measure(self, metric: EventMetric) -> Decimal | int:
        if metric.kind is MetricKind.SUM:
            return self.amount if metric.field == "amount" else self.quantity
        return 1


def distinct_text(value: Any) -> str:
    """A property value as the text its distinct count compares."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An order as stored: placement, refunds and cancellation merged."""

    order_id: str
    placed_at: datetime | None
    amount: Decimal | None
    refunded: Decimal
    cancelled_at: datetime | None
    channel: str | None
    currency: str | None
    items: Sequence[Mapping[str, Any]]  # {"sku", "category", "quantity", "unit_price"}


@dataclass(frozen=True, slots=True)
class InteractionRow:
    at: datetime
    type: str
    properties: Mapping[str, Any]


def order_contribution(
    event_filter: EventFilter, order: OrderRow, distinct_fields: Sequence[str] = ()
) -> Contribution | None:
    """What `order` adds under `event_filter`; None while it does not count (not placed yet,
    cancelled, or not matching). Without an item filter the amount is the order's, net of
    refunds (never below 0), as the built-in spend metrics count it; with one it is the
    matching lines' quantity times unit price: refunds are not allocated to lines."""
    if order.placed_at is None or order.amount is None or order.cancelled_at is not None:
        return None
    base = {"channel": order.channel, "currency": order.currency}
    if event_filter.uses_items:
        lines = [
            item
            for item in order.items
            if event_filter.matches(
                {**base, "item.sku": item.get("sku"), "item.category": item.get("category")}
            )
        ]
        if not lines:
            return None
        amount = sum((Decimal(str(i["unit_price"])) * int(i["quantity"]) for i in lines), ZERO)
    else:
        if not event_filter.matches(base):
            return None
        lines = list(order.items)
        amount = max(order.amount - order.refunded, ZERO)
    quantity = sum(int(i["quantity"]) for i in lines)
    values: dict[str, tuple[str, ...]] = {}
    for name in distinct_fields:
        if name.startswith("item."):
            attribute = name.removeprefix("item.")
            found = {distinct_text(i[attribute]) for i in lines if i.get(attribute) is not None}
            values[name] = tuple(sorted(found))
        else:
            value = base.get(name)
            values[name] = () if value is None else (distinct_text(value),)
    return Contribution(order.placed_at, amount, quantity, values)


def interaction_contribution(
    event_filter: EventFilter, event: InteractionRow, distinct_fields: Sequence[str] = ()
) -> Contribution | None:
    """What an interaction adds under `event_filter`: one event (sums are of orders only)."""
    if event_filter.types and event.type not in event_filter.types:
        return None
    if event_filter.where is not None and not event_filter.matches(
        {**event.properties, "type": event.type}
    ):
        return None
    values: dict[str, tuple[str, ...]] = {}
    for name in distinct_fields:
        value = event.type if name == "type" else event.properties.get(name)
        values[name] = () if value is None else (distinct_text(value),)
    return Contribution(event.at, ZERO, 0, values)


ALL_ORDERS = EventFilter(EventSource.ORDERS, frozenset({"order_placed"}))
ALL_INTERACTIONS = EventFilter(EventSource.INTERACTIONS, frozenset())


def _built_in(
    name: str, kind: MetricKind, event_filter: EventFilter, days: int, summed: str | None = None
) -> EventMetric:
    return EventMetric(name, kind, event_filter, summed, timedelta(days=days))


BUILT_IN_EVENT_METRICS: Mapping[str, EventMetric] = {
    metric.name: metric
    for metric in (
        _built_in("orders_30d", MetricKind.COUNT, ALL_ORDERS, 30),
        _built_in("orders_90d", MetricKind.COUNT, ALL_ORDERS, 90),
        _built_in("orders_365d", MetricKind.COUNT, ALL_ORDERS, 365),
        _built_in("spend_30d", MetricKind.SUM, ALL_ORDERS, 30, "amount"),
        _built_in("spend_90d", MetricKind.SUM, ALL_ORDERS, 90, "amount"),
        _built_in("spend_365d", MetricKind.SUM, ALL_ORDERS, 365, "amount"),
        _built_in("interactions_7d", MetricKind.COUNT, ALL_INTERACTIONS, 7),
        _built_in("interactions_30d", MetricKind.COUNT, ALL_INTERACTIONS, 30),
    )
}
