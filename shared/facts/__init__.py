"""The one read model of a customer's facts: what the segmenter, the population job, the
preview and the API's database fallback all evaluate from (see reader.py)."""

from shared.facts.reader import (
    FactsPlan,
    FactsRead,
    Fold,
    metric_values,
    plan_for,
    read_facts,
    write_fold,
)

__all__ = [
    "FactsPlan",
    "FactsRead",
    "Fold",
    "metric_values",
    "plan_for",
    "read_facts",
    "write_fold",
]
