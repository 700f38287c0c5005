"""The time-indexed facts agree with recomputing from every event: metrics at any instant
after the facts' time, window exits, and the next change found with them equals the one
found by walking every event at every instant."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.segmentation import (
    Assignment,
    CustomerFacts,
    Interaction,
    OrderFact,
    PopulationStats,
    build_facts,
    compute_fact_metrics,
    evaluate,
)
from shared.segmentation import evaluation as core
from shared.segmentation.metrics import (
    METRICS,
    crossing_offsets,
    days_between,
)
from shared.segmentation.timeline import Timeline
from tests.unit.test_segmentation_properties import (
    BASE,
    DAY_US,
    DEFINITIONS,
    ages,
    populations,
    previous_assignments,
)

MICROSECOND = timedelta(microseconds=1)
WINDOW_DAYS = (7, 30, 90, 365)


class Customer(tuple[CustomerFacts, datetime]):
    """Facts at `now`, and the raw history they were built from."""

    orders: list[OrderFact]
    interactions: list[Interaction]


def customer(now: datetime, orders: list[OrderFact], interactions: list[Interaction]) -> Customer:
    found = Customer((build_facts("c-1", now, orders, interactions), now))
    found.orders, found.interactions = orders, interactions
    return found


def at(c: Customer, moment: datetime) -> dict[str, Any]:
    """The metrics at `moment`, recomputed from the whole history known at the facts' time:
    an event dated after it (a producer's clock ahead) counts from the next evaluation."""
    now = c[1]
    orders = [o for o in c.orders if o.placed_at <= now]
    interactions = [i for i in c.interactions if i.at <= now]
    metrics = compute_fact_metrics(build_facts("c-1", moment, c.orders, c.interactions), moment)
    known = compute_fact_metrics(build_facts("c-1", moment, orders, interactions), moment)
    metrics.update((name, known[name]) for name in WINDOWED)
    return metrics


@st.composite
def busy_customers(draw: st.DrawFn) -> Customer:
    """Up to 40 orders and interactions, with ties in time, zero and (rarely) negative
    amounts, so that the search from the newest end meets every case."""
    now = BASE + timedelta(microseconds=draw(st.integers(0, 10 * DAY_US)))
    some_ages = st.lists(ages, min_size=1, max_size=5)
    pool = draw(some_ages)  # repeated ages give ties
    age = st.sampled_from(pool) | ages
    amount = st.integers(-2_000, 50_000).map(lambda cents: Decimal(cents) / 100) | st.just(
        Decimal(0)
    )
    if draw(st.booleans()):
        amount = st.integers(0, 50_000).map(lambda cents: Decimal(cents) / 100)
    orders = [
        OrderFact(now - timedelta(microseconds=a), m)
        for a, m in draw(st.lists(st.tuples(age, amount), max_size=40))
    ]
    interactions = [
        Interaction(now - timedelta(microseconds=a)) for a in draw(st.lists(age, max_size=40))
    ]
    return customer(now, orders, interactions)


def instants(c: Customer, now: datetime) -> Iterator[datetime]:
    """`now` and instants after it where some event leaves a window, and a microsecond
    either side of them (every 7th event's, so that recomputing each stays quick)."""
    yield now
    times = [o.placed_at for o in c.orders] + [i.at for i in c.interactions]
    for event_at in times[::7]:
        for days in WINDOW_DAYS:
            edge = event_at + timedelta(days=days)
            yield from (m for m in (edge - MICROSECOND, edge, edge + MICROSECOND) if m >= now)


@settings(max_examples=200, deadline=None)
@given(busy_customers())
def test_metrics_at_any_instant_equal_the_walk(c: Customer) -> None:
    facts, now = c
    timeline = Timeline(facts)

    for moment in instants(c, now):
        assert timeline.metrics(moment) == at(c, moment), moment


WINDOWED = sorted(name for name, metric in METRICS.items() if metric.leaves_window)


@settings(max_examples=300, deadline=None)
@given(busy_customers(), st.sampled_from(WINDOWED), st.data())
def test_window_exits_equal_the_walk(c: Customer, name: str, data: st.DataObject) -> None:
    facts, now = c
    # Thresholds the value actually takes on the way down, so that landing exactly on one
    # is tried, beside arbitrary ones and an unresolved cut-off.
    taken: list[Any] = [at(c, m)[name] for m in instants(c, now)]
    threshold = (
        st.sampled_from(taken)
        | st.integers(-1, 12)
        | st.just(Decimal("Infinity"))
        | st.floats(0, 1000, allow_nan=False)
    )
    thresholds = data.draw(st.lists(threshold, max_size=5))

    found = set(Timeline(facts).window_exits(name, now, thresholds))

    assert found == set(walked_window_exits(name, c, now, thresholds))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_next_change_equals_the_walk_it_replaced(data: st.DataObject) -> None:
    c = data.draw(busy_customers())
    facts, now = c
    previous = data.draw(previous_assignments(now))
    population = data.draw(populations())

    found = evaluate(DEFINITIONS, facts, now, previous, population)

    assert found.next_change_at == walked_next_change_at(c, now, found.current, population)


# The search as it was before the timeline: every instant's metrics by walking every event,
# and window exits by walking every event oldest first.
def walked_next_change_at(
    c: Customer,
    now: datetime,
    current: Mapping[str, Assignment],
    population: PopulationStats,
) -> datetime | None:
    facts = c[0]
    env = core._environment(DEFINITIONS, at(c, now), population)
    moments: dict[int, int] = {}
    for dependence in DEFINITIONS.time_dependences:
        thresholds: list[Any] = [*dependence.constants]
        thresholds.extend(env[cutoff] for cutoff in dependence.cutoffs)
        for score in dependence.scores:
            thresholds.extend(population.edges.get(score, ()))
        metric = METRICS[dependence.metric]
        if metric.anchor is not None:
            anchor = metric.anchor(facts)
            offsets = walked_crossings(anchor, now, env[dependence.metric], thresholds)
        else:
            assert metric.leaves_window
            offsets = walked_window_exits(dependence.metric, c, now, thresholds)
        for offset in offsets:
            moments[offset] = moments.get(offset, 0) | dependence.dimension_mask
    for index, dimension in enumerate(DEFINITIONS.dimensions):
        limits = [*dimension.thresholds.get("days_in_segment", ())]
        limits.extend(env[c] for c in dimension.cutoff_refs.get("days_in_segment", ()))
        if limits:
            since = current[dimension.name].since
            days = days_between(since, now)
            for offset in walked_crossings(since, now, days, limits):
                moments[offset] = moments.get(offset, 0) | 1 << index
    for offset in sorted(moments):
        moment = now + timedelta(microseconds=offset)
        moment_env = core._environment(DEFINITIONS, at(c, moment), population)
        for index, dimension in enumerate(DEFINITIONS.dimensions):
            if moments[offset] >> index & 1:
                prior = current[dimension.name]
                rule, _ = core._settle(dimension, moment_env, prior, moment, "c-1", False)
                if rule.name != prior.segment:
                    return moment
    return None


def walked_crossings(
    anchor: datetime | None, now: datetime, value: Any, thresholds: list[Any]
) -> Iterator[int]:
    """Every crossing still ahead, however far."""
    if anchor is None or value is None:
        return
    since_anchor = (now - anchor) // MICROSECOND
    for threshold in thresholds:
        if value <= threshold and math.isfinite(threshold):
            for offset in crossing_offsets(threshold):
                if offset > since_anchor:
                    yield offset - since_anchor


def walked_window_exits(
    name: str, c: Customer, now: datetime, thresholds: list[Any]
) -> Iterator[int]:
    metric = METRICS[name].event
    assert metric is not None
    assert metric.window is not None
    span = metric.window // MICROSECOND
    exits: list[tuple[int, Any]]
    spend = metric.field == "amount"
    if metric.filter.source == "orders":
        exits = [
            (span - (now - o.placed_at) // MICROSECOND, max(o.net_amount, Decimal(0)))
            for o in c.orders
            if o.placed_at <= now
        ]
    else:
        exits = [(span - (now - i.at) // MICROSECOND, 1) for i in c.interactions if i.at <= now]
    inside = sorted((ahead, amount) for ahead, amount in exits if ahead > 0)
    value: Any = sum(amount for _, amount in inside) if spend else len(inside)
    for ahead, amount in inside:
        after = value - (amount if spend else 1)
        low, high = min(after, value), max(after, value)
        if any(low <= c <= high for c in thresholds):
            yield ahead
        value = after
