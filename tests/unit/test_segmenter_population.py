"""When the segmenter recomputes population statistics, and whom new ones re-queue."""

from __future__ import annotations

import pytest

from services.segmenter.population import Reason, moved_customers, recompute_due
from shared.segmentation import (
    MetricValue,
    PopulationStats,
    compute_population_stats,
    load_definitions,
)

MIN_INTERVAL, INTERVAL = 2.0, 300.0


def due(
    stats_customers: int | None,
    customers: int | None,
    since: float,
    *,
    has_stats: bool = True,
) -> Reason | None:
    return recompute_due(
        has_stats=has_stats,
        stats_customers=stats_customers,
        customers=customers,
        seconds_since_recompute=since,
        min_interval_seconds=MIN_INTERVAL,
        interval_seconds=INTERVAL,
    )


@pytest.mark.parametrize(
    ("stats_customers", "customers", "since", "has_stats", "expected"),
    [
        # (a) no stats for the version in force: at once, whatever else is known.
        (None, None, 0.0, False, "no_stats"),
        (0, 1000, 0.0, False, "no_stats"),
        # (b) the population changed by 10% or more, or from none to some.
        (0, 1, 2.0, True, "population_changed"),
        (0, 1000, 2.0, True, "population_changed"),
        (1000, 1100, 2.0, True, "population_changed"),
        (1000, 900, 2.0, True, "population_changed"),
        (1000, 1099, 2.0, True, None),
        (1000, 901, 2.0, True, None),
        (1000, 1000, 299.0, True, None),
        (0, 0, 299.0, True, None),
        # ... but not more often than the minimum interval.
        (0, 1000, 1.999, True, None),
        (1000, 5000, 0.0, True, None),
        # Nothing to compare with: only the interval counts.
        (None, 5000, 10.0, True, None),
        (1000, None, 10.0, True, None),
        # (c) otherwise every interval, changed or not.
        (1000, 1000, 300.0, True, "interval"),
        (None, None, 300.0, True, "interval"),
    ],
)
def test_recompute_due(
    stats_customers: int | None,
    customers: int | None,
    since: float,
    has_stats: bool,
    expected: Reason | None,
) -> None:
    assert due(stats_customers, customers, since, has_stats=has_stats) == expected


RECENCY = load_definitions(
    """
    scores:
      r_score: {metric: days_since_last_order, buckets: 5, better: lower}
    dimensions:
      recency:
        segments:
          hot: r_score >= 4
          cold: r_score < 4 or r_score is null
    """
)


def stats_of(samples: dict[str, dict[str, MetricValue]]) -> PopulationStats:
    columns = {"days_since_last_order": [s["days_since_last_order"] for s in samples.values()]}
    return compute_population_stats(RECENCY, columns)


def test_without_old_stats_every_customer_with_a_value_moves() -> None:
    samples: dict[str, dict[str, MetricValue]] = {
        f"c{days}": {"days_since_last_order": float(days)} for days in (1, 5, 30, 90, 200, 400)
    }
    samples["browser"] = {"days_since_last_order": None}  # never ordered: no score to move
    new = stats_of(samples)
    # Evaluated with unresolved edges, if at all (every score 1): all may move.
    assert moved_customers(RECENCY, None, new, samples) == set(samples) - {"browser"}
    assert moved_customers(RECENCY, PopulationStats(), new, samples) == set(samples) - {"browser"}
    assert moved_customers(RECENCY, new, new, samples) == set()


def test_a_moved_edge_moves_exactly_the_customers_between_its_positions() -> None:
    samples: dict[str, dict[str, MetricValue]] = {
        f"c{days}": {"days_since_last_order": float(days)} for days in range(1, 11)
    }
    old = PopulationStats(edges={"r_score": (2.0, 4.0, 6.0, 8.0)})
    new = PopulationStats(edges={"r_score": (2.0, 4.0, 7.0, 8.0)})
    assert moved_customers(RECENCY, old, new, samples) == {"c6", "c7"}
