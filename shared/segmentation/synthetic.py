"""Synthetic customers for validation: turn target metric values into a real event history.

Coverage checks enumerate metric values independently, but metrics are linked
(days_since_first_order >= days_since_last_order, orders_30d <= orders_90d, has_ordered
<=> orders_total > 0, an order in the last 30 days <=> days_since_last_order < 30, ...).
Rather than encode every link, each combination of targets is realized as an actual
order/interaction history and the metrics are recomputed from it with the same code the
evaluator runs. Impossible combinations fail to realize and are skipped, so every
reported overlap or gap comes with a customer that can exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.segmentation.facts import CustomerFacts, Interaction, OrderFact, build_facts
from shared.segmentation.metrics import MICROSECONDS_PER_DAY, MetricValue

REFERENCE_NOW = datetime(2024, 1, 1, tzinfo=UTC)
_ORDER_EDGES_US = tuple(days * MICROSECONDS_PER_DAY for days in (30, 90, 365))
_INTERACTION_EDGES_US = tuple(days * MICROSECONDS_PER_DAY for days in (7, 30))
_DEFAULT_AMOUNT = Decimal(10)


class _Infeasible(Exception):
    """The targets contradict each other: no history has these metric values."""


def realize(targets: Mapping[str, MetricValue]) -> CustomerFacts | None:
    """A customer whose metrics at `REFERENCE_NOW` have the target values, or None if the
    combination is impossible. Days targets are ages in whole microseconds (ints)."""
    try:
        orders = _orders(targets)
        interactions = _interactions(targets)
        cart_at = _cart(targets)
    except _Infeasible:
        return None
    facts = build_facts("synthetic", REFERENCE_NOW, orders, interactions, cart_at)
    if (cart_at is None) != (facts.last_cart_at is None):
        return None  # the cart was added before the last order, so it is not open
    return facts


def _at(age_us: int) -> datetime:
    try:
        return REFERENCE_NOW - timedelta(microseconds=age_us)
    except OverflowError:
        raise _Infeasible from None  # before year 1: no customer ordered then


def _present(
    targets: Mapping[str, MetricValue],
    flag: str,
    nullables: Sequence[str],
    positives: Sequence[str],
    total: str | None = None,
) -> bool:
    """Whether the customer has events of one kind, as all targets that say so agree."""
    votes: set[bool] = set()
    if flag in targets:
        votes.add(bool(targets[flag]))
    votes.update(targets[key] is not None for key in nullables if key in targets)
    if total is not None and total in targets:
        votes.add(_num(targets[total]) > 0)
    votes.update(True for key in positives if key in targets and _num(targets[key]) > 0)
    if len(votes) > 1:
        raise _Infeasible
    return votes.pop() if votes else False


def _num(value: MetricValue) -> Decimal:
    assert isinstance(value, int | float | Decimal)
    return Decimal(value)


def _opt_int(targets: Mapping[str, MetricValue], key: str) -> int | None:
    value = targets.get(key)
    if value is None:
        return None
    assert isinstance(value, int)
    return value


def _bucket(age_us: int, edges: Sequence[int]) -> int:
    for index, edge in enumerate(edges):
        if age_us < edge:
            return index
    return len(edges)


def _distribute(
    cumulative: Sequence[Decimal | int | None],
    lows: list[int],
    open_: list[bool],
    default: Sequence[Decimal | int],
) -> list[Decimal]:
    """Per-bucket amounts matching the given cumulative totals (None: free).

    Each bucket gets at least its low bound; whatever a cumulative total needs beyond that
    goes to the first bucket in its range that may hold more. Buckets after the last given
    total get their default."""
    amounts = [Decimal(low) for low in lows]
    start, reached = 0, Decimal(0)
    for index, total in enumerate(cumulative):
        if total is None:
            continue
        span = range(start, index + 1)
        extra = Decimal(total) - reached - sum(amounts[i] for i in span)
        if extra < 0:
            raise _Infeasible
        if extra:
            free = [i for i in span if open_[i]]
            if not free:
                raise _Infeasible
            amounts[free[0]] += extra
        start, reached = index + 1, Decimal(total)
    for index in range(start, len(amounts)):
        if open_[index]:
            amounts[index] = max(amounts[index], Decimal(default[index]))
    return amounts


def _place(
    edges: Sequence[int], cumulative: Sequence[int | None], last: int | None, first: int | None
) -> list[list[int]]:
    """Event ages per bucket (buckets split at `edges`) with the given cumulative counts
    (the last one is the total), most recent age `last` and oldest age `first`."""
    count = len(edges) + 1
    if last is not None and first is not None and last > first:
        raise _Infeasible
    lows, open_ = [0] * count, [True] * count
    last_bucket = _bucket(last, edges) if last is not None else None
    first_bucket = _bucket(first, edges) if first is not None else None
    for index in range(count):
        too_recent = last_bucket is not None and index < last_bucket
        too_old = first_bucket is not None and index > first_bucket
        open_[index] = not (too_recent or too_old)
    for bucket in (last_bucket, first_bucket):
        if bucket is not None:
            lows[bucket] = 1
    if last_bucket is not None and last_bucket == first_bucket and last != first:
        lows[last_bucket] = 2
    counts = [int(n) for n in _distribute(cumulative, lows, open_, [0] * count)]
    if sum(counts) == 0:
        # The caller needs at least one event: put it in the first bucket no given
        # cumulative count pins down.
        given = [index for index, total in enumerate(cumulative) if total is not None]
        free = [i for i in range(given[-1] + 1 if given else 0, count) if open_[i]]
        if not free:
            raise _Infeasible
        counts[free[0]] = 1
    ages = []
    for index, n in enumerate(counts):
        lower_edge = edges[index - 1] if index else 0
        if index == last_bucket and index == first_bucket:
            assert last is not None
            assert first is not None
            bucket_ages = [last] + [first] * (n - 1)
        elif index == last_bucket:
            assert last is not None
            bucket_ages = [last] * n
        elif index == first_bucket:
            assert first is not None
            bucket_ages = [first] * n
        else:
            bucket_ages = [lower_edge + MICROSECONDS_PER_DAY] * n
        ages.append(bucket_ages)
    return ages


def _orders(targets: Mapping[str, MetricValue]) -> list[OrderFact]:
    spends = ("spend_30d", "spend_90d", "spend_365d", "net_spend_total")
    windows = ("orders_30d", "orders_90d", "orders_365d")
    nullables = ("days_since_last_order", "days_since_first_order", "aov")
    if not _present(targets, "has_ordered", nullables, (*windows, *spends), "orders_total"):
        return []
    ages = _place(
        _ORDER_EDGES_US,
        [_opt_int(targets, key) for key in (*windows, "orders_total")],
        _opt_int(targets, "days_since_last_order"),
        _opt_int(targets, "days_since_first_order"),
    )
    counts = [len(bucket) for bucket in ages]
    spent: list[Decimal | int | None] = [
        _num(targets[key]) if key in targets else None for key in spends
    ]
    if "aov" in targets:
        total = _num(targets["aov"]) * sum(counts)
        if spent[-1] is not None and spent[-1] != total:
            raise _Infeasible
        spent[-1] = total
    amounts = _distribute(
        spent, [0] * len(counts), [n > 0 for n in counts], [_DEFAULT_AMOUNT * n for n in counts]
    )
    orders = []
    for bucket_ages, amount in zip(ages, amounts, strict=True):
        for position, age in enumerate(bucket_ages):
            # The bucket's whole amount on its first order; amounts of 0 are valid orders.
            orders.append(OrderFact(_at(age), amount if position == 0 else Decimal(0)))
    return orders


def _interactions(targets: Mapping[str, MetricValue]) -> list[Interaction]:
    windows = ("interactions_7d", "interactions_30d")
    nullables = ("days_since_last_interaction",)
    if not _present(targets, "has_interacted", nullables, windows, "interactions_total"):
        return []
    ages = _place(
        _INTERACTION_EDGES_US,
        [_opt_int(targets, key) for key in (*windows, "interactions_total")],
        _opt_int(targets, "days_since_last_interaction"),
        None,
    )
    return [Interaction(_at(age)) for bucket in ages for age in bucket]


def _cart(targets: Mapping[str, MetricValue]) -> datetime | None:
    if not _present(targets, "has_open_cart", ("days_since_open_cart",), ()):
        return None
    age = _opt_int(targets, "days_since_open_cart")
    return _at(MICROSECONDS_PER_DAY if age is None else age)
