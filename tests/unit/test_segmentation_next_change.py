"""next_change_at: exact to the microsecond, found by walking threshold crossings forward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from shared.segmentation import (
    Assignment,
    CustomerFacts,
    Definitions,
    Evaluation,
    Interaction,
    OrderFact,
    PopulationStats,
    build_facts,
    default_definitions,
    evaluate,
    load_definitions,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
EMPTY = PopulationStats()
MICROSECOND = timedelta(microseconds=1)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def customer(
    orders: Sequence[tuple[float, str]] = (), interactions: Sequence[float] = ()
) -> CustomerFacts:
    return build_facts(
        "c-1",
        NOW,
        [OrderFact(ago(age), Decimal(amount)) for age, amount in orders],
        [Interaction(ago(age)) for age in interactions],
    )


def changes_at(
    definitions: Definitions,
    facts: CustomerFacts,
    first: Evaluation,
    moment: datetime,
    population: PopulationStats = EMPTY,
) -> dict[str, str]:
    """The dimensions whose segment changed at `moment`, given the first evaluation."""
    later = evaluate(definitions, facts, moment, first.current, population, find_next_change=False)
    return {name: d.segment for name, d in later.assignments.items() if d.changed}


def assert_next_change(
    facts: CustomerFacts,
    expected_at: datetime,
    expected: Mapping[str, str],
    definitions: Definitions | None = None,
    previous: Mapping[str, Assignment] | None = None,
    population: PopulationStats = EMPTY,
) -> None:
    definitions = definitions or default_definitions()
    first = evaluate(definitions, facts, NOW, previous or {}, population)
    assert first.next_change_at == expected_at
    before = expected_at - MICROSECOND
    assert changes_at(definitions, facts, first, before, population) == {}
    assert (
        changes_at(definitions, facts, first, expected_at - timedelta(seconds=1), population) == {}
    )
    assert changes_at(definitions, facts, first, expected_at, population) == expected


def test_at_risk_becomes_churned_180_days_after_the_last_order() -> None:
    facts = customer(orders=[(95.2, "10")])
    assert facts.last_order_at is not None
    assert_next_change(facts, facts.last_order_at + timedelta(days=180), {"lifecycle": "churned"})


def test_new_becomes_active_30_days_after_the_first_order() -> None:
    facts = customer(orders=[(10, "10")])
    assert_next_change(facts, ago(10) + timedelta(days=30), {"lifecycle": "active"})


def test_engaged_becomes_casual_7_days_after_the_last_interaction() -> None:
    facts = customer(interactions=[3.25, 20])
    assert_next_change(facts, ago(3.25) + timedelta(days=7), {"engagement": "casual"})


def test_reactivated_exits_to_active_after_30_days_in_segment() -> None:
    facts = customer(orders=[(300, "10"), (1, "10")])
    entered = ago(0.5)
    previous = {"lifecycle": Assignment("reactivated", entered)}
    assert_next_change(
        facts, entered + timedelta(days=30), {"lifecycle": "active"}, previous=previous
    )


def test_state_machine_entry_at_now_counts_days_in_segment_from_now() -> None:
    facts = customer(orders=[(300, "10"), (2, "10")])
    first = evaluate(
        default_definitions(), facts, NOW, {"lifecycle": Assignment("churned", ago(90))}, EMPTY
    )
    assert first.assignments["lifecycle"].segment == "reactivated"
    assert first.next_change_at == NOW + timedelta(days=30)


def test_value_tier_drops_when_an_order_leaves_the_365_day_window() -> None:
    population = PopulationStats(
        cutoffs={"vip_spend": Decimal(500), "high_spend": Decimal(200), "medium_spend": Decimal(50)}
    )
    facts = customer(orders=[(300, "400"), (100, "150"), (20, "10")])
    # 560 (vip) -> 160 (medium) when the 300-day-old order turns 365 days old.
    assert_next_change(
        facts, ago(300) + timedelta(days=365), {"value_tier": "medium"}, population=population
    )


def test_rolling_window_count_crossing_a_threshold() -> None:
    definitions = load_definitions(
        """
        dimensions:
          frequency:
            segments:
              frequent: orders_30d >= 2
              occasional: orders_30d < 2
        """
    )
    facts = customer(orders=[(25, "1"), (12.5, "1"), (3, "1")])
    # 3 -> 2 orders at 25+5 days (no change), 2 -> 1 when the 12.5-day-old order exits.
    assert_next_change(
        facts, ago(12.5) + timedelta(days=30), {"frequency": "occasional"}, definitions
    )


def test_fractional_thresholds_are_exact_to_the_microsecond() -> None:
    definitions = load_definitions(
        """
        dimensions:
          odd:
            segments:
              fresh: days_since_last_order <= 12.3456789
              stale: days_since_last_order > 12.3456789 or days_since_last_order is null
        """
    )
    facts = customer(orders=[(1, "1")])
    first = evaluate(definitions, facts, NOW, {}, EMPTY)
    moment = first.next_change_at
    assert moment is not None
    assert changes_at(definitions, facts, first, moment - MICROSECOND) == {}
    assert changes_at(definitions, facts, first, moment) == {"odd": "stale"}


def test_no_change_within_the_horizon_gives_none() -> None:
    facts = customer(orders=[(500, "10")])
    result = evaluate(default_definitions(), facts, NOW, {}, EMPTY)
    assert {name: d.segment for name, d in result.assignments.items()} == {
        "lifecycle": "churned",
        "value_tier": "none",
        "rfm": "new",
        "engagement": "none",
    }
    assert result.next_change_at is None


def test_changes_beyond_400_days_are_not_reported() -> None:
    definitions = load_definitions(
        """
        dimensions:
          tenure:
            segments:
              young: days_since_first_order < 1000 or days_since_first_order is null
              old: days_since_first_order >= 1000
        """
    )
    assert evaluate(definitions, customer(orders=[(1, "1")]), NOW, {}, EMPTY).next_change_at is None
    facts = customer(orders=[(700, "1")])
    assert evaluate(definitions, facts, NOW, {}, EMPTY).next_change_at == ago(700) + timedelta(
        days=1000
    )


def test_next_change_is_in_the_timezone_of_now() -> None:
    facts = customer(orders=[(10, "10")])
    plus_two = timezone(timedelta(hours=2))
    result = evaluate(default_definitions(), facts, NOW.astimezone(plus_two), {}, EMPTY)
    assert result.next_change_at is not None
    assert result.next_change_at.tzinfo == plus_two
    assert result.next_change_at == ago(10) + timedelta(days=30)
