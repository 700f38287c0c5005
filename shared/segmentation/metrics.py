"""The named, typed metrics that conditions refer to, and how they are computed from facts."""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.segmentation.facts import CustomerFacts

from shared.segmentation.events import BUILT_IN_EVENT_METRICS, EventMetric, MetricKind
from shared.segmentation.traits import BUILT_IN_TRAITS, TraitKind

DAY = timedelta(days=1)
MICROSECONDS_PER_DAY = 86_400_000_000
ZERO = Decimal(0)

MetricValue = int | float | Decimal | bool | str | tuple[str, ...] | None
Number = int | float | Decimal


class MetricType(enum.StrEnum):
    """What kind of value a metric holds; conditions are type-checked against it."""

    COUNT = "count"
    MONEY = "money"
    DAYS = "days"
    SCORE = "score"
    YEARS = "years"  # whole years: `age`
    NUMBER = "number"  # a custom number trait, or a number an event property is compared with
    BOOL = "bool"
    SEGMENT = "segment"
    STRING = "string"  # compared with = != in, with a bare name or a quoted string
    STRINGS = "strings"  # a list of strings, tested with `contains`

    @property
    def is_number(self) -> bool:
        return self in _NUMBER_TYPES

    def coerce(self, value: Number) -> Number:
        """Convert a literal to the Python type this metric is computed in, so that
        comparisons at evaluation time are exact and need no conversion."""
        if self is MetricType.MONEY:
            return value if isinstance(value, Decimal) else Decimal(str(value))
        if self is MetricType.DAYS:
            return float(value)
        integral = int(value)
        return integral if integral == value else float(value)


_NUMBER_TYPES = frozenset(
    {
        MetricType.COUNT,
        MetricType.MONEY,
        MetricType.DAYS,
        MetricType.SCORE,
        MetricType.YEARS,
        MetricType.NUMBER,
    }
)


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric's contract. `anchor` marks a days-since metric (it grows with time from that
    instant); `event` marks an event metric, and a windowed one steps down as events leave
    its window."""

    name: str
    type: MetricType
    nullable: bool
    description: str
    anchor: Callable[[CustomerFacts], datetime | None] | None = None
    event: EventMetric | None = None

    @property
    def leaves_window(self) -> bool:
        """A windowed count, sum or distinct count: its value steps as events leave."""
        return (
            self.event is not None
            and self.event.window is not None
            and self.event.kind not in (MetricKind.FIRST, MetricKind.LAST)
        )


def _metric(name: str, type_: MetricType, description: str, nullable: bool = False) -> Metric:
    return Metric(name, type_, nullable, description)


def _days_since(
    name: str, description: str, anchor: Callable[[CustomerFacts], datetime | None]
) -> Metric:
    return Metric(name, MetricType.DAYS, True, description, anchor=anchor)


def _windowed(name: str, source: Literal["orders", "interactions"], days: int) -> Metric:
    spend = name.startswith("spend")
    type_ = MetricType.MONEY if spend else MetricType.COUNT
    noun = "net spend on orders" if spend else source
    description = f"{noun} in the last {days} days"
    return Metric(name, type_, False, description, event=BUILT_IN_EVENT_METRICS[name])


_ALL: tuple[Metric, ...] = (
    _metric("orders_total", MetricType.COUNT, "lifetime orders, cancelled excluded"),
    _metric("net_spend_total", MetricType.MONEY, "lifetime net spend"),
    _windowed("orders_30d", "orders", 30),
    _windowed("orders_90d", "orders", 90),
    _windowed("orders_365d", "orders", 365),
    _windowed("spend_30d", "orders", 30),
    _windowed("spend_90d", "orders", 90),
    _windowed("spend_365d", "orders", 365),
    _metric("aov", MetricType.MONEY, "average order value (lifetime)", nullable=True),
    _days_since("days_since_first_order", "age of the first order", lambda f: f.first_order_at),
    _days_since("days_since_last_order", "age of the last order", lambda f: f.last_order_at),
    _days_since(
        "days_since_last_interaction",
        "age of the last interaction",
        lambda f: f.last_interaction_at,
    ),
    _days_since(
        "days_since_open_cart",
        "age of the last add_to_cart not followed by an order",
        lambda f: f.last_cart_at,
    ),
    _metric("interactions_total", MetricType.COUNT, "lifetime interactions"),
    _windowed("interactions_7d", "interactions", 7),
    _windowed("interactions_30d", "interactions", 30),
    _metric("has_ordered", MetricType.BOOL, "orders_total > 0"),
    _metric("has_interacted", MetricType.BOOL, "interactions_total > 0"),
    _metric("has_open_cart", MetricType.BOOL, "days_since_open_cart is not null"),
    _metric("previous", MetricType.SEGMENT, "current segment in this dimension", nullable=True),
    _metric("days_in_segment", MetricType.DAYS, "time in the current segment", nullable=True),
)


def _signup_at(facts: CustomerFacts) -> datetime | None:
    value = facts.traits.get("signup_at")
    return value if isinstance(value, datetime) else None


TRAIT_TYPES: Mapping[TraitKind, MetricType] = {
    TraitKind.STRING: MetricType.STRING,
    TraitKind.NUMBER: MetricType.NUMBER,
    TraitKind.BOOLEAN: MetricType.BOOL,
    TraitKind.STRINGS: MetricType.STRINGS,
}
AGE = "age"  # moves at midnight on the birthday, in the evaluation's time zone


def trait_metric(name: str, kind: TraitKind, description: str) -> Metric:
    """The contract of a trait used as it is (a built-in one or a custom one)."""
    return Metric(name, TRAIT_TYPES[kind], True, description)


# Traits as conditions read them (traits.trait_metrics): birth_date as `age`, signup_at as
# `days_since_signup`, the others as they are; a missing trait is null.
_TRAITS: tuple[Metric, ...] = (
    *(
        trait_metric(trait.name, trait.kind, trait.description)
        for trait in BUILT_IN_TRAITS.values()
        if trait.kind in TRAIT_TYPES
    ),
    Metric(AGE, MetricType.YEARS, True, "whole years since birth_date"),
    Metric("days_since_signup", MetricType.DAYS, True, "days since signup_at", anchor=_signup_at),
)
TRAIT_METRICS = frozenset(metric.name for metric in _TRAITS)

METRICS: Mapping[str, Metric] = {metric.name: metric for metric in (*_ALL, *_TRAITS)}
# `previous` and `days_in_segment` depend on the dimension being evaluated, not on the facts.
DIMENSION_METRICS = frozenset({"previous", "days_in_segment"})
FACT_METRICS = frozenset(METRICS) - DIMENSION_METRICS


def event_metric_contract(event: EventMetric) -> Metric:
    """The contract of a declared event metric: counts and distinct counts are counts, a
    sum of amount is an amount, of quantity a count; first and last are days since that
    event, null while there is none (or, for a windowed last, once it left the window)."""
    description = event.description or f"{event.kind} of {event.field or 'events'}"
    if event.kind in (MetricKind.FIRST, MetricKind.LAST):
        name = event.name

        def anchor(facts: CustomerFacts) -> datetime | None:
            value = facts.events.get(name)
            return value if isinstance(value, datetime) else None

        return Metric(name, MetricType.DAYS, True, description, anchor=anchor, event=event)
    type_ = (
        MetricType.MONEY
        if event.kind is MetricKind.SUM and event.field == "amount"
        else (MetricType.COUNT)
    )
    return Metric(event.name, type_, False, description, event=event)


def days_between(earlier: datetime | None, now: datetime) -> float | None:
    """Fractional days from `earlier` to `now`, clamped at 0 for events after `now`."""
    if earlier is None:
        return None
    days = (now - earlier) / DAY
    return days if days > 0.0 else 0.0


def compute_fact_metrics(
    facts: CustomerFacts,
    now: datetime,
    event_metrics: Mapping[str, EventMetric] | None = None,
    *,
    zone: tzinfo = UTC,
    custom_traits: Iterable[str] = (),
) -> dict[str, MetricValue]:
    """Every fact-derived metric of `facts` at `now` (never the wall clock), at or after
    the facts' `as_of`. `event_metrics`: the specs of the event metrics in `facts.events`
    (the built-in ones when None); `zone`: where `age` moves at midnight on the birthday;
    `custom_traits`: the declared custom traits, null when the customer has none."""
    from shared.segmentation.timeline import Timeline

    return Timeline(facts, event_metrics, zone=zone, custom_traits=custom_traits).metrics(now)


def lifetime_metrics(facts: CustomerFacts, now: datetime) -> dict[str, MetricValue]:
    """The metrics read from the lifetime aggregates ingest keeps."""
    has_ordered = facts.order_count > 0
    return {
        "orders_total": facts.order_count,
        "net_spend_total": facts.net_spend,
        "aov": facts.net_spend / facts.order_count if has_ordered else None,
        "days_since_first_order": days_between(facts.first_order_at, now),
        "days_since_last_order": days_between(facts.last_order_at, now),
        "days_since_last_interaction": days_between(facts.last_interaction_at, now),
        "days_since_open_cart": days_between(facts.last_cart_at, now),
        "interactions_total": facts.interaction_count,
        "has_ordered": has_ordered,
        "has_interacted": facts.interaction_count > 0,
        "has_open_cart": facts.last_cart_at is not None,
    }


def format_value(value: MetricValue, against: MetricValue = None) -> str:
    """Render a value for a reason: numbers rounded to 2 decimals, unless rounding would
    change how the value compares with `against` (then as many digits as needed)."""
    kind = type(value)
    if kind is float or kind is Decimal:
        assert isinstance(value, float | Decimal)
        return _format_fraction(value, against)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)


def _format_fraction(value: float | Decimal, against: MetricValue) -> str:
    if not value.is_finite() if isinstance(value, Decimal) else not math.isfinite(value):
        return str(value)
    comparable = isinstance(against, int | float | Decimal) and not isinstance(against, bool)
    for digits in (2, 4, 6, 9):
        text = f"{value:.{digits}f}"
        if not comparable:
            break
        assert isinstance(against, int | float | Decimal)
        shown = Decimal(text) if isinstance(value, Decimal) else float(text)
        if _sign(shown, against) == _sign(value, against):
            break
    else:
        return str(value)
    return text.rstrip("0").rstrip(".")


def _sign(value: Number, against: Number) -> int:
    return (value > against) - (value < against)


@functools.lru_cache(maxsize=4096)
def crossing_offsets(threshold: Number) -> tuple[int, int]:
    """The first microsecond offsets `m` (from a days-since anchor) at which the metric's value
    `m / MICROSECONDS_PER_DAY` is `>= threshold` and `> threshold`.

    Computed with the very float arithmetic `days_between` uses, so a comparison's truth
    flips exactly there: this is what makes next-change times exact to the microsecond."""
    return _first_offset(threshold, strict=False), _first_offset(threshold, strict=True)


def _first_offset(threshold: Number, strict: bool) -> int:
    def passes(offset: int) -> bool:
        days = offset / MICROSECONDS_PER_DAY
        return days > threshold if strict else days >= threshold

    # The flip is within a few float steps of the exact product, and a float step of a large
    # value spans many microseconds (16 at a million days): gallop out to bracket the flip,
    # then bisect, so that a far threshold costs no more than a near one.
    high = math.floor(Fraction(threshold) * MICROSECONDS_PER_DAY)
    low, step = high - 1, 1
    while not passes(high):
        low, high, step = high, high + step, step * 2
    step = 1
    while passes(low):
        low, high, step = low - step, low, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high
