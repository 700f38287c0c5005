"""Invariants over any customer, previous assignments, population and `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.segmentation import (
    Assignment,
    CustomerFacts,
    Evaluation,
    Interaction,
    OrderFact,
    PopulationStats,
    build_facts,
    compute_population_stats,
    default_definitions,
    evaluate,
    matching_segments,
)
from shared.segmentation.conditions import holds

DEFINITIONS = default_definitions()
BASE = datetime(2024, 6, 1, tzinfo=UTC)
DAY_US = 86_400_000_000
MICROSECOND = timedelta(microseconds=1)
FAR_AHEAD = timedelta(days=100 * 365)
# Ages in microseconds: anywhere (even slightly ahead of now), or exactly on a boundary.
ages = st.one_of(
    st.integers(-2 * DAY_US, 800 * DAY_US),  # a little in the future too: clock skew
    st.sampled_from([0, 7, 30, 90, 180, 365]).map(lambda days: days * DAY_US),
)
amounts = st.integers(0, 50_000).map(lambda cents: Decimal(cents) / 100)


@st.composite
def customers(draw: st.DrawFn) -> tuple[CustomerFacts, datetime]:
    now = BASE + timedelta(microseconds=draw(st.integers(0, 10 * DAY_US)))
    orders = [
        OrderFact(now - timedelta(microseconds=age), amount)
        for age, amount in draw(st.lists(st.tuples(ages, amounts), max_size=6))
    ]
    interactions = [
        Interaction(now - timedelta(microseconds=age)) for age in draw(st.lists(ages, max_size=6))
    ]
    cart_age = draw(st.none() | ages)
    cart = None if cart_age is None else now - timedelta(microseconds=cart_age)
    return build_facts("c-1", now, orders, interactions, cart), now


@st.composite
def previous_assignments(draw: st.DrawFn, now: datetime) -> dict[str, Assignment]:
    assignments = {}
    for dimension in DEFINITIONS.dimensions:
        choice = draw(st.none() | st.sampled_from([*dimension.segments, "retired_segment"]))
        if choice is not None:
            since = now - timedelta(microseconds=draw(ages))
            assignments[dimension.name] = Assignment(choice, since)
    return assignments


@st.composite
def populations(draw: st.DrawFn) -> PopulationStats:
    if draw(st.booleans()):
        return PopulationStats()
    size = st.integers(1, 30)
    count = draw(size)
    return compute_population_stats(
        DEFINITIONS,
        {
            "spend_365d": draw(st.lists(amounts, min_size=count, max_size=count)),
            "days_since_last_order": draw(
                st.lists(st.floats(0, 400) | st.none(), min_size=count, max_size=count)
            ),
            "orders_365d": draw(st.lists(st.integers(0, 12), min_size=count, max_size=count)),
        },
    )


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[CustomerFacts, datetime, dict[str, Assignment], PopulationStats]:
    facts, now = draw(customers())
    return facts, now, draw(previous_assignments(now)), draw(populations())


def changed(
    situation: tuple[CustomerFacts, datetime, dict[str, Assignment], PopulationStats],
    first: Evaluation,
    moment: datetime,
) -> dict[str, str]:
    facts, _, _, population = situation
    later = evaluate(DEFINITIONS, facts, moment, first.current, population, find_next_change=False)
    return {name: d.segment for name, d in later.assignments.items() if d.changed}


@settings(max_examples=300, deadline=None)
@given(situations())
def test_every_dimension_has_exactly_one_segment(
    situation: tuple[CustomerFacts, datetime, dict[str, Assignment], PopulationStats],
) -> None:
    facts, now, previous, population = situation
    matches = matching_segments(DEFINITIONS, facts, now, previous, population)
    assert all(len(segments) == 1 for segments in matches.values()), matches
    result = evaluate(DEFINITIONS, facts, now, previous, population)
    assert set(result.assignments) == {d.name for d in DEFINITIONS.dimensions}
    for dimension in DEFINITIONS.dimensions:
        decision = result.assignments[dimension.name]
        assert decision.segment in dimension.segments
        rule = next(r for r in dimension.rules if r.name == decision.segment)
        assert holds(rule.condition, decision.values)  # the interpreter agrees with the compiler


@settings(max_examples=150, deadline=None)
@given(situations())
def test_evaluation_is_deterministic_and_settled(
    situation: tuple[CustomerFacts, datetime, dict[str, Assignment], PopulationStats],
) -> None:
    facts, now, previous, population = situation
    first = evaluate(DEFINITIONS, facts, now, previous, population)
    again = evaluate(DEFINITIONS, facts, now, previous, population)
    assert first == again
    assert [d.reason for d in first.assignments.values()] == [
        d.reason for d in again.assignments.values()
    ]
    for name, decision in first.assignments.items():
        prior = previous.get(name)
        assert decision.changed == (prior is None or prior.segment != decision.segment)
        assert decision.since == (now if decision.changed else prior.since if prior else now)
    # Evaluating again at the same instant with the new assignments changes nothing.
    assert changed(situation, first, now) == {}


@settings(max_examples=300, deadline=None)
@given(situations(), st.floats(0, 1))
def test_next_change_at_is_exact(
    situation: tuple[CustomerFacts, datetime, dict[str, Assignment], PopulationStats],
    fraction: float,
) -> None:
    facts, now, previous, population = situation
    first = evaluate(DEFINITIONS, facts, now, previous, population)
    moment = first.next_change_at
    if moment is None:
        # None means never: check long after every window has emptied and every threshold
        # drawn here (constants, cut-offs and score edges, all under 1,000 days) has passed.
        end = now + FAR_AHEAD
        assert changed(situation, first, end) == {}
        assert changed(situation, first, now + (end - now) * fraction) == {}
        return
    assert now < moment
    assert changed(situation, first, moment - MICROSECOND) == {}
    assert changed(situation, first, max(now, moment - timedelta(seconds=1))) == {}
    assert changed(situation, first, now + (moment - MICROSECOND - now) * fraction) == {}
    assert changed(situation, first, moment) != {}
