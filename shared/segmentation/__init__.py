"""The pure segmentation core: definitions, conditions, evaluation.

It imports no Kafka, SQL, Redis or asyncio: it takes plain typed values (customer facts,
previous assignments, population stats, definitions, a `now`) and returns decisions with
reasons. See docs/segments.md.
"""

from shared.segmentation.evaluation import (
    Decision,
    Evaluation,
    UncoveredCustomerError,
    evaluate,
    matching_segments,
)
from shared.segmentation.facts import Assignment, CustomerFacts, Interaction, OrderFact, build_facts
from shared.segmentation.loader import default_definitions, load_definitions
from shared.segmentation.metrics import (
    METRICS,
    Metric,
    MetricType,
    MetricValue,
    compute_fact_metrics,
)
from shared.segmentation.model import (
    CutoffSpec,
    DefinitionError,
    Definitions,
    Dimension,
    Problem,
    ScoreSpec,
    SegmentRule,
)
from shared.segmentation.population import (
    PopulationStats,
    compute_population_stats,
    population_sample,
)

__all__ = [
    "METRICS",
    "Assignment",
    "CustomerFacts",
    "CutoffSpec",
    "Decision",
    "DefinitionError",
    "Definitions",
    "Dimension",
    "Evaluation",
    "Interaction",
    "Metric",
    "MetricType",
    "MetricValue",
    "OrderFact",
    "PopulationStats",
    "Problem",
    "ScoreSpec",
    "SegmentRule",
    "UncoveredCustomerError",
    "build_facts",
    "compute_fact_metrics",
    "compute_population_stats",
    "default_definitions",
    "evaluate",
    "load_definitions",
    "matching_segments",
    "population_sample",
]
