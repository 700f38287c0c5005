"""A customer's event metrics indexed by time, for evaluating at many instants.

The next-change search evaluates at several instants after the facts' `as_of`. A windowed
metric's value there is what the events of its head (`WindowFacts`) still inside the
window add up to: exact while the head holds every event inside, and otherwise above every
threshold the metric is compared with, which is all a comparison needs (see WindowFacts).
The head is sorted once, with suffix sums, so a window at any instant is a bisect, and the
exits that matter are found from the newest end, stopping as soon as the remaining value
is above every threshold.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import accumulate
from typing import Any

from shared.segmentation.events import BUILT_IN_EVENT_METRICS, EventMetric, MetricKind
from shared.segmentation.facts import CustomerFacts, Measure, WindowFacts
from shared.segmentation.metrics import (
    MICROSECONDS_PER_DAY,
    MetricValue,
    days_between,
    lifetime_metrics,
)
from shared.segmentation.traits import trait_metrics

_MICROSECOND = timedelta(microseconds=1)


class _Window:
    """One windowed metric's head, oldest first, with suffix sums."""

    __slots__ = ("exact", "span", "suffix", "times", "value", "width")

    def __init__(self, facts: WindowFacts, width: timedelta) -> None:
        oldest_first = facts.head[::-1]
        self.times = [at for at, _ in oldest_first]
        zero: Measure = 0
        if oldest_first:
            zero = oldest_first[0][1] * 0
        suffix = list(accumulate((m for _, m in facts.head), initial=zero))
        suffix.reverse()  # suffix[i]: what times[i:] add up to
        self.suffix = suffix
        self.value = facts.value
        self.width = width
        self.span = width // _MICROSECOND

    def at(self, moment: datetime) -> Measure:
        first = bisect_right(self.times, moment - self.width)
        last = bisect_right(self.times, moment)
        return self.suffix[first] - self.suffix[last]


class Timeline:
    """`facts`' metrics at any instant from `facts.as_of` on, with `window_exits`."""

    __slots__ = ("_fixed", "_times", "_windows", "custom_traits", "event_metrics", "facts", "zone")

    def __init__(
        self,
        facts: CustomerFacts,
        event_metrics: Mapping[str, EventMetric] | None = None,
        *,
        zone: tzinfo = UTC,
        custom_traits: Iterable[str] = (),
    ) -> None:
        self.facts = facts
        self.zone = zone  # where `age` moves at midnight on the birthday
        self.custom_traits = tuple(custom_traits)
        self.event_metrics = BUILT_IN_EVENT_METRICS if event_metrics is None else event_metrics
        self._windows: dict[str, _Window] = {}
        for name, window in facts.windows.items():
            metric = self.event_metrics.get(name) or BUILT_IN_EVENT_METRICS.get(name)
            if metric is not None and metric.window is not None:
                self._windows[name] = _Window(window, metric.window)
        # The search asks for every metric at several instants: what does not move with
        # time is sorted out once.
        self._fixed: dict[str, MetricValue] = {}
        self._times: list[tuple[str, datetime, timedelta | None]] = []
        for name, value in facts.events.items():
            if name in self._windows:
                continue
            metric = self.event_metrics.get(name) or BUILT_IN_EVENT_METRICS.get(name)
            if metric is not None and metric.kind in (MetricKind.FIRST, MetricKind.LAST):
                if value is None:
                    self._fixed[name] = None
                else:
                    width = None if metric.kind is MetricKind.FIRST else metric.window
                    self._times.append((name, value, width))
            else:
                self._fixed[name] = value
        for name in self.custom_traits:
            self._fixed[name] = None

    def metrics(self, now: datetime) -> dict[str, MetricValue]:
        """Every fact-derived metric at `now`."""
        facts = self.facts
        env = lifetime_metrics(facts, now)
        at_facts_time = facts.as_of is None or now == facts.as_of
        for name, window in self._windows.items():
            env[name] = window.value if at_facts_time else window.at(now)
        for name, at, width in self._times:
            inside = width is None or at > now - width
            env[name] = days_between(at, now) if inside else None
        env.update(self._fixed)
        env.update(trait_metrics(facts.traits, now, self.zone))
        return env

    def window_exits(self, name: str, now: datetime, thresholds: Sequence[Any]) -> Iterator[int]:
        """Microsecond offsets from `now` (at most the window's length) at which an event
        leaving metric `name`'s window moves its value onto or across one of `thresholds`."""
        window = self._windows.get(name)
        if window is None:
            return
        finite = [c for c in thresholds if c != math.inf and c != -math.inf]
        times = window.times
        first = bisect_right(times, now - window.width)  # times[first:] inside
        last = bisect_right(times, now)
        if not finite or first == last:
            return
        top = max(finite)
        # Exit k (oldest first) takes the value from value(k) down to value(k + 1), where
        # value(k) adds up times[k:last]. Walking from the newest, value(k + 1) only
        # grows: once it is above every threshold, no older exit can reach one.
        base = window.suffix[last]
        after: Any = window.suffix[last] - base
        for k in range(last - 1, first - 1, -1):
            if after > top:
                return
            before: Any = window.suffix[k] - base
            if any(after <= c <= before for c in finite):
                yield window.span - (now - times[k]) // _MICROSECOND
            after = before


def lateness_exits(metric: EventMetric, anchor: datetime | None, now: datetime) -> int | None:
    """For a windowed `last` metric: the offset at which its event leaves the window and
    the metric becomes null (None: never, or already null)."""
    if metric.window is None or anchor is None:
        return None
    ahead = (anchor + metric.window - now) // _MICROSECOND
    return ahead if ahead > 0 else None


__all__ = ["MICROSECONDS_PER_DAY", "Timeline", "lateness_exits"]
