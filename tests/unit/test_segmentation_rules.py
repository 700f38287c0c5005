"""Table tests for every default rule, at every boundary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.segmentation import (
    Assignment,
    CustomerFacts,
    Interaction,
    OrderFact,
    PopulationStats,
    build_facts,
    compute_population_stats,
    default_definitions,
    evaluate,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
EMPTY = PopulationStats()
# Spenders 1..100: vip >= 96 (top 5), high >= 81 (top 20), medium >= 51 (top 50).
SPENDERS = PopulationStats(
    cutoffs={"vip_spend": Decimal(96), "high_spend": Decimal(81), "medium_spend": Decimal(51)}
)
# r_score: <= 10 days is 5, (10, 20] is 4, ... > 40 is 1; f_score: orders_365d 1..5+.
GRID = PopulationStats(edges={"r_score": (10.0, 20.0, 30.0, 40.0), "f_score": (1, 2, 3, 4)})


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def customer(
    orders: Sequence[tuple[float, str]] = (),
    interactions: Sequence[float] = (),
    cart: float | None = None,
) -> CustomerFacts:
    """A customer from order (age in days, amount) pairs and interaction ages."""
    return build_facts(
        "c-1",
        NOW,
        [OrderFact(ago(age), Decimal(amount)) for age, amount in orders],
        [Interaction(ago(age)) for age in interactions],
        None if cart is None else ago(cart),
    )


def segment(
    dimension: str,
    facts: CustomerFacts,
    previous: Mapping[str, Assignment] | None = None,
    population: PopulationStats = EMPTY,
) -> str:
    result = evaluate(default_definitions(), facts, NOW, previous or {}, population)
    return result.assignments[dimension].segment


def was(segment: str, days_ago: float = 10.0) -> dict[str, Assignment]:
    return {"lifecycle": Assignment(segment, ago(days_ago))}


@pytest.mark.parametrize(
    ("facts", "previous", "expected"),
    [
        (customer(), None, "prospect"),
        (customer(interactions=[1]), None, "prospect"),
        (customer(orders=[(0, "10")]), None, "new"),
        (customer(orders=[(29.99, "10")]), None, "new"),
        (customer(orders=[(30, "10")]), None, "active"),
        (customer(orders=[(30.01, "10")]), None, "active"),
        (customer(orders=[(89.99, "10")]), None, "active"),
        (customer(orders=[(90, "10")]), None, "at_risk"),
        (customer(orders=[(90.01, "10")]), None, "at_risk"),
        (customer(orders=[(179.99, "10")]), None, "at_risk"),
        (customer(orders=[(180, "10")]), None, "churned"),
        (customer(orders=[(180.01, "10")]), None, "churned"),
        (customer(orders=[(900, "10")]), None, "churned"),
        (customer(orders=[(40, "10"), (10, "5")]), was("new"), "active"),
    ],
)
def test_lifecycle_without_history(
    facts: CustomerFacts, previous: dict[str, Assignment] | None, expected: str
) -> None:
    assert segment("lifecycle", facts, previous) == expected


@pytest.mark.parametrize(
    ("last_order_days", "previous", "expected"),
    [
        # Entry: an order in the last 30 days after at_risk or churned.
        (0.5, "at_risk", "reactivated"),
        (29.99, "churned", "reactivated"),
        (30, "churned", "active"),
        (30, "at_risk", "active"),
        (0.5, "active", "active"),
        (0.5, "prospect", "active"),
        (95, "at_risk", "at_risk"),
        (200, "churned", "churned"),
    ],
)
def test_lifecycle_reactivation_entry(last_order_days: float, previous: str, expected: str) -> None:
    facts = customer(orders=[(300, "10"), (last_order_days, "10")])
    assert segment("lifecycle", facts, was(previous)) == expected


@pytest.mark.parametrize(
    ("days_in_segment", "last_order_days", "expected"),
    [
        (0, 0, "reactivated"),
        (29.99, 29.99, "reactivated"),
        (30, 30, "active"),  # reactivated lasts 30 days, then the ordinary rules apply
        (30.01, 30.01, "active"),
        (10, 89.99, "reactivated"),
        (10, 90, "at_risk"),  # lapsing again ends it early
    ],
)
def test_lifecycle_reactivated_exit(
    days_in_segment: float, last_order_days: float, expected: str
) -> None:
    facts = customer(orders=[(300, "10"), (last_order_days, "10")])
    previous = was("reactivated", days_ago=days_in_segment)
    assert segment("lifecycle", facts, previous) == expected


def test_lifecycle_reasons_show_actual_values() -> None:
    result = evaluate(default_definitions(), customer(orders=[(95.2, "10")]), NOW, {}, EMPTY)
    assert result.assignments["lifecycle"].reason == (
        "days_since_last_order=95.2 >= 90 and days_since_last_order=95.2 < 180"
    )
    back = customer(orders=[(300, "10"), (2.5, "10")])
    result = evaluate(default_definitions(), back, NOW, was("churned"), EMPTY)
    assert result.assignments["lifecycle"].reason == (
        "reactivating (previous=churned in [at_risk, churned] and days_since_last_order=2.5 < 30)"
    )
    result = evaluate(default_definitions(), customer(), NOW, {}, EMPTY)
    assert result.assignments["lifecycle"].reason == "has_ordered=false"


@pytest.mark.parametrize(
    ("spend", "expected"),
    [
        ("100", "vip"),
        ("96", "vip"),  # exactly at the top-5% cut-off
        ("95.99", "high"),
        ("81", "high"),
        ("80.99", "medium"),
        ("51", "medium"),
        ("50.99", "low"),
        ("0.01", "low"),
        ("0", "none"),
    ],
)
def test_value_tier_boundaries(spend: str, expected: str) -> None:
    facts = customer(orders=[(10, spend)])
    assert segment("value_tier", facts, population=SPENDERS) == expected


def test_value_tier_cutoffs_resolved_from_population() -> None:
    definitions = default_definitions()
    samples = {
        "spend_365d": [Decimal(n) for n in range(1, 101)] + [Decimal(0)] * 50,
        "days_since_last_order": [],
        "orders_365d": [],
    }
    population = compute_population_stats(definitions, samples)
    assert population.cutoffs == SPENDERS.cutoffs


def test_value_tier_without_population_puts_spenders_in_low() -> None:
    assert segment("value_tier", customer(orders=[(10, "5000")])) == "low"
    assert segment("value_tier", customer()) == "none"
    assert segment("value_tier", customer(orders=[(365, "5000")])) == "none"
    assert segment("value_tier", customer(orders=[(364.99, "5000")])) == "low"


RFM_MAP = {  # rows: r_score 5..1, columns: f_score 1..5
    5: ["new", "potential_loyalist", "potential_loyalist", "champions", "champions"],
    4: ["promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"],
    3: ["about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"],
    2: ["hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"],
    1: ["lost", "hibernating", "at_risk", "at_risk", "cannot_lose"],
}
RECENCY_FOR_R = {5: 5.0, 4: 15.0, 3: 25.0, 2: 35.0, 1: 45.0}


@pytest.mark.parametrize(("r_score", "f_score"), [(r, f) for r in range(1, 6) for f in range(1, 6)])
def test_rfm_map_cells(r_score: int, f_score: int) -> None:
    last = RECENCY_FOR_R[r_score]
    facts = customer(orders=[(last + n, "10") for n in range(f_score)])
    result = evaluate(default_definitions(), facts, NOW, {}, GRID)
    decision = result.assignments["rfm"]
    assert decision.segment == RFM_MAP[r_score][f_score - 1]
    assert decision.values["r_score"] == r_score
    assert decision.values["f_score"] == f_score


@pytest.mark.parametrize(
    ("last_order_days", "r_score"),
    [(0, 5), (10, 5), (10.00001, 4), (20, 4), (30.5, 2), (40, 2), (40.01, 1)],
)
def test_rfm_recency_score_at_edges(last_order_days: float, r_score: int) -> None:
    facts = customer(orders=[(last_order_days, "10")])
    result = evaluate(default_definitions(), facts, NOW, {}, GRID)
    assert result.assignments["rfm"].values["r_score"] == r_score


def test_rfm_customers_without_orders_are_none() -> None:
    assert segment("rfm", customer(interactions=[1]), population=GRID) == "none"


def test_rfm_without_population_everyone_who_ordered_is_new() -> None:
    # Unresolved edges put every value in the first bucket: best recency, lowest frequency.
    assert segment("rfm", customer(orders=[(100, "10"), (50, "10")])) == "new"


@pytest.mark.parametrize(
    ("interaction_days", "expected"),
    [
        ([], "none"),
        ([0], "engaged"),
        ([6.99], "engaged"),
        ([7], "casual"),
        ([7.01], "casual"),
        ([29.99], "casual"),
        ([30], "dormant"),
        ([400], "dormant"),
        ([400, 3], "engaged"),
    ],
)
def test_engagement_boundaries(interaction_days: list[float], expected: str) -> None:
    assert segment("engagement", customer(interactions=interaction_days)) == expected


def test_since_is_kept_when_unchanged_and_now_when_changed() -> None:
    facts = customer(orders=[(95, "10")])
    entered = ago(5)
    result = evaluate(
        default_definitions(), facts, NOW, {"lifecycle": Assignment("at_risk", entered)}, EMPTY
    )
    kept = result.assignments["lifecycle"]
    assert (kept.changed, kept.since, kept.previous) == (False, entered, "at_risk")
    result = evaluate(
        default_definitions(), facts, NOW, {"lifecycle": Assignment("active", entered)}, EMPTY
    )
    moved = result.assignments["lifecycle"]
    assert (moved.segment, moved.changed, moved.since, moved.previous) == (
        "at_risk",
        True,
        NOW,
        "active",
    )


def test_unknown_previous_segment_counts_as_none() -> None:
    facts = customer(orders=[(0.5, "10"), (300, "10")])
    previous = {"lifecycle": Assignment("dormant_legacy", ago(50))}
    result = evaluate(default_definitions(), facts, NOW, previous, EMPTY)
    assert result.assignments["lifecycle"].segment == "active"
    assert result.assignments["lifecycle"].changed


def test_evaluate_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(default_definitions(), customer(), datetime(2024, 1, 1), {}, EMPTY)  # noqa: DTZ001
