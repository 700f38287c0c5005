"""A customer's recent events indexed by time, for evaluating at many instants.

`compute_fact_metrics` walks every recent event; the next-change search evaluates at several
instants and walks the events again to find where rolling windows step down. For a busy
customer (thousands of orders a year) that made one evaluation cost tens of milliseconds.
Here the events are sorted once, with suffix sums, so a window at any instant is a bisect
and the window exits that matter are found from the newest end, stopping as soon as the
remaining value is above every threshold. The results are equal to the walk's: the unit
tests compare them on random facts and instants.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from operator import attrgetter
from typing import Any

from shared.segmentation.facts import CustomerFacts
from shared.segmentation.metrics import (
    MICROSECONDS_PER_DAY,
    ZERO,
    MetricValue,
    Window,
    fact_metrics,
)

_MICROSECOND = timedelta(microseconds=1)
_W7, _W30, _W90, _W365 = (timedelta(days=days) for days in (7, 30, 90, 365))
_placed_at = attrgetter("placed_at")


class Timeline:
    """`facts`' recent orders and interactions, oldest first, with suffix sums of spend."""

    __slots__ = ("facts", "has_refund_below_zero", "interactions", "order_times", "spend_from")

    def __init__(self, facts: CustomerFacts) -> None:
        orders = sorted(facts.recent_orders, key=_placed_at)  # already sorted: a quick check
        amounts = [o.net_amount for o in orders]
        self.facts = facts
        self.order_times: list[datetime] = [o.placed_at for o in orders]
        # spend_from[i]: the spend of orders[i:], summed from the newest where a walk from the
        # oldest would start there; Decimal sums of money are exact, so the order is free.
        spend_from = list(accumulate(reversed(amounts), initial=ZERO))
        spend_from.reverse()
        self.spend_from: list[Decimal] = spend_from
        self.interactions = sorted(facts.recent_interactions)
        # A negative net amount would let a window's spend go up as orders leave it; the
        # search from the newest end relies on it only going down.
        self.has_refund_below_zero = bool(amounts) and min(amounts) < 0

    def metrics(self, now: datetime) -> dict[str, MetricValue]:
        """Equal to `compute_fact_metrics(facts, now)`."""
        times, spend, interactions = self.order_times, self.spend_from, self.interactions
        n, m = len(times), len(interactions)
        # An event is inside a window while its age is strictly less than the window.
        i30 = bisect_right(times, now - _W30)
        i90 = bisect_right(times, now - _W90)
        i365 = bisect_right(times, now - _W365)
        j7 = bisect_right(interactions, now - _W7)
        j30 = bisect_right(interactions, now - _W30)
        return fact_metrics(
            self.facts,
            now,
            (n - i30, n - i90, n - i365),
            (spend[i30], spend[i90], spend[i365]),
            (m - j7, m - j30),
        )

    def window_exits(
        self, window: Window, now: datetime, thresholds: Sequence[Any]
    ) -> Iterator[int]:
        """Microsecond offsets from `now` (at most the window's length) at which an event
        leaving `window` moves its value onto or across one of `thresholds`."""
        spend = window.measure == "spend"
        if spend and self.has_refund_below_zero:
            yield from _exits_walking_every_order(self.facts, window, now, thresholds)
            return
        times = self.order_times if window.source == "orders" else self.interactions
        n = len(times)
        first = bisect_right(times, now - timedelta(days=window.days))  # times[first:] inside
        finite = [c for c in thresholds if c != math.inf and c != -math.inf]
        if not finite or first == n:
            return
        top = max(finite)
        span = window.days * MICROSECONDS_PER_DAY
        # Exit k (oldest first) takes the value from value(k) down to value(k + 1), where
        # value(k) counts or sums times[k:]. Walking from the newest, value(k + 1) only grows:
        # once it is above every threshold, no older exit can reach one.
        after: Any = ZERO if spend else 0
        for k in range(n - 1, first - 1, -1):
            if after > top:
                return
            before: Any = self.spend_from[k] if spend else n - k
            if any(after <= c <= before for c in finite):
                yield span - (now - times[k]) // _MICROSECOND
            after = before


def _exits_walking_every_order(
    facts: CustomerFacts, window: Window, now: datetime, thresholds: Sequence[Any]
) -> Iterator[int]:
    """The plain walk, for the odd customer with a negative net order amount."""
    span = window.days * MICROSECONDS_PER_DAY
    exits = [
        (span - (now - o.placed_at) // _MICROSECOND, o.net_amount) for o in facts.recent_orders
    ]
    inside = sorted((ahead, amount) for ahead, amount in exits if ahead > 0)
    value: Any = sum(amount for _, amount in inside)
    for ahead, amount in inside:
        after = value - amount
        low, high = min(after, value), max(after, value)
        if any(low <= c <= high for c in thresholds):
            yield ahead
        value = after
