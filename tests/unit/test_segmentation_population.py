"""Population stats: percentile cut-offs, quantile edges, and their storage form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.segmentation import (
    OrderFact,
    PopulationStats,
    build_facts,
    compute_population_stats,
    default_definitions,
    load_definitions,
    population_sample,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
CUTOFFS = """
cutoffs:
  top: {metric: spend_365d, top_percent: 10}
  fixed: {metric: spend_365d, value: 250}
dimensions:
  tier:
    segments:
      top: spend_365d >= top
      fixed: spend_365d >= fixed and spend_365d < top
      rest: spend_365d < fixed and spend_365d < top
"""


def columns(
    spend: list[Decimal | None],
    days: list[float | None] | None = None,
    orders: list[int] | None = None,
) -> dict[str, list[Decimal | None] | list[float | None] | list[int]]:
    return {"spend_365d": spend, "days_since_last_order": days or [], "orders_365d": orders or []}


@pytest.mark.parametrize(
    ("spend", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10),  # top 10% of 10 is one customer
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 10),  # ceil(1.1) = 2 customers
        ([5], 5),
        ([0, 0, 0, 7], 7),  # customers who spent nothing are not in the population
        ([3, 3, 3, 3], 3),  # ties: everyone at the cut-off is in
    ],
)
def test_top_percent_cutoff(spend: list[int], expected: int) -> None:
    definitions = load_definitions(CUTOFFS)
    stats = compute_population_stats(definitions, {"spend_365d": [Decimal(s) for s in spend]})
    assert stats.cutoffs == {"top": Decimal(expected)}


def test_empty_population_leaves_cutoffs_unresolved() -> None:
    definitions = load_definitions(CUTOFFS)
    stats = compute_population_stats(definitions, {"spend_365d": [Decimal(0), None]})
    assert stats.cutoffs == {}


def test_quintile_edges_are_nearest_rank() -> None:
    stats = compute_population_stats(
        default_definitions(),
        columns(
            [Decimal(n) for n in range(1, 11)],
            [float(n) for n in range(10, 0, -1)] + [None],
            [1, 1, 1, 1, 1, 1, 2, 2, 3, 9],
        ),
    )
    assert stats.edges["m_score"] == (Decimal(2), Decimal(4), Decimal(6), Decimal(8))
    assert stats.edges["r_score"] == (2.0, 4.0, 6.0, 8.0)
    assert stats.edges["f_score"] == (1, 1, 1, 2)  # ties collapse edges


def test_missing_sample_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="orders_365d"):
        compute_population_stats(
            default_definitions(), {"spend_365d": [], "days_since_last_order": []}
        )


def test_round_trip_through_json() -> None:
    definitions = default_definitions()
    stats = compute_population_stats(
        definitions,
        columns([Decimal("10.25"), Decimal("99.99")], [1.5, 2.25], [1, 2]),
    )
    stored = json.loads(json.dumps(stats.to_dict()))
    assert PopulationStats.from_dict(definitions, stored) == stats
    assert isinstance(stats.edges["r_score"][0], float)
    assert isinstance(stats.cutoffs["vip_spend"], Decimal)


def test_from_dict_drops_entries_the_definitions_no_longer_have() -> None:
    data = {"cutoffs": {"gone": "5", "vip_spend": "12.5"}, "edges": {"old_score": ["1"]}}
    stats = PopulationStats.from_dict(default_definitions(), data)
    assert stats == PopulationStats(cutoffs={"vip_spend": Decimal("12.5")})


def test_population_sample_has_the_metrics_the_stats_need() -> None:
    facts = build_facts(
        "c-1",
        NOW,
        [
            OrderFact(NOW - timedelta(days=400), Decimal(7)),
            OrderFact(NOW - timedelta(days=36), Decimal(5)),
        ],
    )
    assert population_sample(default_definitions(), facts, NOW) == {
        "spend_365d": Decimal(5),
        "orders_365d": 1,
        "days_since_last_order": 36.0,
    }
