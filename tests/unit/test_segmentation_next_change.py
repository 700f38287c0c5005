"""next_change_at: exact to the microsecond, found by walking threshold crossings forward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

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
from shared.segmentation.metrics import MICROSECONDS_PER_DAY, crossing_offsets

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


def test_a_customer_whom_time_no_longer_changes_gets_none() -> None:
    facts = customer(orders=[(500, "10")])
    result = evaluate(default_definitions(), facts, NOW, {}, EMPTY)
    assert {name: d.segment for name, d in result.assignments.items()} == {
        "lifecycle": "churned",
        "value_tier": "none",
        "rfm": "new",
        "engagement": "none",
    }
    assert result.next_change_at is None


def lapsing_after(days: str) -> Definitions:
    return load_definitions(
        f"""
        dimensions:
          lapse:
            segments:
              recent: days_since_last_order < {days} or not has_ordered
              lapsed: days_since_last_order >= {days}
        """
    )


def test_a_730_day_lookback_changes_exactly_730_days_after_the_last_order() -> None:
    facts = customer(orders=[(10.123456, "1")])
    assert facts.last_order_at is not None
    assert_next_change(
        facts, facts.last_order_at + timedelta(days=730), {"lapse": "lapsed"}, lapsing_after("730")
    )


def test_a_ten_year_lookback_changes_exactly_ten_years_after_the_last_order() -> None:
    facts = customer(orders=[(3.5, "1")])
    assert facts.last_order_at is not None
    ten_years = timedelta(days=3652)
    assert_next_change(
        facts, facts.last_order_at + ten_years, {"lapse": "lapsed"}, lapsing_after("3652")
    )


def test_a_threshold_past_year_9999_is_never_reached() -> None:
    for days in (str(10**9), str(10**300)):
        result = evaluate(lapsing_after(days), customer(orders=[(1, "1")]), NOW, {}, EMPTY)
        assert result.assignments["lapse"].segment == "recent"
        assert result.next_change_at is None


def test_a_crossing_just_before_the_last_representable_instant_is_found() -> None:
    facts = customer(orders=[(1, "1")])
    assert facts.last_order_at is not None
    days = (datetime.max.replace(tzinfo=UTC) - facts.last_order_at) // timedelta(days=1)
    definitions = lapsing_after(str(days))
    first = evaluate(definitions, facts, NOW, {}, EMPTY)
    moment = first.next_change_at
    # Days near 3 million are floats 40 microseconds apart: the flip is where they say so.
    assert moment is not None
    assert abs(moment - (facts.last_order_at + timedelta(days=days))) < timedelta(seconds=1)
    assert changes_at(definitions, facts, first, moment - MICROSECOND) == {}
    assert changes_at(definitions, facts, first, moment) == {"lapse": "lapsed"}
    too_far = evaluate(lapsing_after(str(days + 2)), facts, NOW, {}, EMPTY)
    assert too_far.next_change_at is None


def test_a_1000_day_rule_changes_even_from_the_first_day() -> None:
    definitions = load_definitions(
        """
        dimensions:
          tenure:
            segments:
              young: days_since_first_order < 1000 or days_since_first_order is null
              old: days_since_first_order >= 1000
        """
    )
    for age in (1, 700):
        facts = customer(orders=[(age, "1")])
        assert_next_change(facts, ago(age) + timedelta(days=1000), {"tenure": "old"}, definitions)


def test_next_change_is_in_the_timezone_of_now() -> None:
    facts = customer(orders=[(10, "10")])
    plus_two = timezone(timedelta(hours=2))
    result = evaluate(default_definitions(), facts, NOW.astimezone(plus_two), {}, EMPTY)
    assert result.next_change_at is not None
    assert result.next_change_at.tzinfo == plus_two
    assert result.next_change_at == ago(10) + timedelta(days=30)


@given(
    st.floats(-1e6, 1e6, allow_nan=False)
    | st.floats(1e6, 1e300)
    | st.integers(0, 10**12)
    | st.decimals(0, 10**7, places=6)
)
def test_crossing_offsets_are_where_days_between_flips(threshold: float | int | Decimal) -> None:
    at_least, above = crossing_offsets(threshold)
    assert (at_least - 1) / MICROSECONDS_PER_DAY < threshold <= at_least / MICROSECONDS_PER_DAY
    assert (above - 1) / MICROSECONDS_PER_DAY <= threshold < above / MICROSECONDS_PER_DAY
