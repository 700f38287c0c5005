"""Population statistics: percentile cut-offs and score quantile edges.

The segmenter recomputes them on a schedule from every customer's sample; between
recomputations they are fixed inputs to `evaluate`. Unresolved values (an empty
population) mean "nobody reaches the cut-off" and "every value is in the first bucket".
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any

from shared.segmentation.facts import CustomerFacts
from shared.segmentation.metrics import Metric, MetricValue, Number, compute_fact_metrics
from shared.segmentation.model import CutoffSpec, Definitions, ScoreSpec

UNRESOLVED_CUTOFF = Decimal("Infinity")


@dataclass(frozen=True, slots=True)
class PopulationStats:
    """Resolved cut-off values by cut-off name and quantile edges by score name.

    `edges[score]` is ascending with `buckets - 1` values; a value above `k` edges lands in
    bucket `k + 1` (counted from the worst end for `better: lower` scores)."""

    cutoffs: Mapping[str, Number] = field(default_factory=dict)
    edges: Mapping[str, tuple[Number, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; numbers become strings so that amounts round-trip exactly."""
        return {
            "cutoffs": {name: str(value) for name, value in self.cutoffs.items()},
            "edges": {
                name: [str(value) for value in values] for name, values in self.edges.items()
            },
        }

    @classmethod
    def from_dict(cls, definitions: Definitions, data: Mapping[str, Any]) -> PopulationStats:
        """Read `to_dict` output back, typed by the metrics of `definitions`; entries the
        definitions no longer have are dropped."""
        cutoffs = {
            name: _metric_of(definitions, definitions.cutoffs[name]).type.coerce(Decimal(value))
            for name, value in data.get("cutoffs", {}).items()
            if name in definitions.cutoffs
        }
        edges = {
            name: tuple(
                definitions.metric(definitions.scores[name].metric).type.coerce(Decimal(v))
                for v in values
            )
            for name, values in data.get("edges", {}).items()
            if name in definitions.scores
        }
        return cls(cutoffs, edges)


def _metric_of(definitions: Definitions, spec: CutoffSpec) -> Metric:
    assert spec.metric is not None
    return definitions.metric(spec.metric)


def population_sample(
    definitions: Definitions, facts: CustomerFacts, now: datetime, *, zone: tzinfo = UTC
) -> dict[str, MetricValue]:
    """One customer's values of `definitions.population_metrics`, for the service to collect
    into the columns `compute_population_stats` takes (`zone`: where birthdays begin)."""
    metrics = compute_fact_metrics(
        facts,
        now,
        definitions.event_metrics,
        zone=zone,
        custom_traits=tuple(definitions.custom_traits),
    )
    return {name: metrics[name] for name in definitions.population_metrics}


def compute_population_stats(
    definitions: Definitions, samples: Mapping[str, Iterable[MetricValue]]
) -> PopulationStats:
    """Resolve percentile cut-offs and score edges from per-metric columns of sample values
    (one value per customer; nulls are skipped). Raises ValueError if a column is missing.

    A `top_percent: p` cut-off is the lowest value among the top ceil(p% of n) customers with
    a positive value, so `metric >= cutoff` selects them (ties at the cut-off included).
    Score edges are nearest-rank quantiles: edge i of b is the smallest value with at least
    i/b of the sample at or below it."""
    missing = sorted(definitions.population_metrics - set(samples))
    if missing:
        raise ValueError(f"samples are missing the metrics {missing}")
    columns: dict[str, list[Number]] = {}

    def column(metric: str) -> list[Number]:
        if metric not in columns:
            type_ = definitions.metric(metric).type
            columns[metric] = sorted(
                type_.coerce(value)
                for value in samples[metric]
                if isinstance(value, int | float | Decimal) and not isinstance(value, bool)
            )
        return columns[metric]

    cutoffs: dict[str, Number] = {}
    for name, spec in definitions.cutoffs.items():
        if spec.top_percent is None or spec.metric is None:
            continue
        positive = [value for value in column(spec.metric) if value > 0]
        if positive:
            top = max(1, math.ceil(len(positive) * Fraction(spec.top_percent) / 100))
            cutoffs[name] = positive[len(positive) - top]
    edges = {}
    for name, score in definitions.scores.items():
        values = column(score.metric)
        if values:
            edges[name] = _quantile_edges(values, score.buckets)
    return PopulationStats(cutoffs, edges)


def _quantile_edges(ordered: Sequence[Number], buckets: int) -> tuple[Number, ...]:
    size = len(ordered)
    return tuple(ordered[-(-size * i // buckets) - 1] for i in range(1, buckets))


def cutoff_value(spec: CutoffSpec, population: PopulationStats) -> Number:
    """The value a cut-off stands for: absolute, resolved, or unresolved (infinite)."""
    if spec.value is not None:
        return spec.value
    return population.cutoffs.get(spec.name, UNRESOLVED_CUTOFF)


def score_of(spec: ScoreSpec, value: MetricValue, edges: tuple[Number, ...] | None) -> int | None:
    """The score of one value: null for a null input, else its bucket (1 is the worst)."""
    if value is None:
        return None
    above = bisect_left(edges, value) if edges else 0
    return 1 + above if spec.higher_is_better else spec.buckets - above
