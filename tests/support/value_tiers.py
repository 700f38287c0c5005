"""The value tiers the default definitions promise, recomputed from spends alone.

Shares no code with the segmenter: docs/segments.md says a `top_percent: p` cut-off is the
lowest spend among the top ceil(p% of n) of the n customers with a positive spend_365d, and
a customer is in the highest tier whose cut-off they reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

TIERS = (("vip", 5), ("high", 20), ("medium", 50))


def expected_value_tiers(spend_365d: Mapping[str, Decimal]) -> dict[str, str]:
    """Each customer's value tier, given every customer's spend in the last 365 days."""
    ranked = sorted((spend for spend in spend_365d.values() if spend > 0), reverse=True)
    # ceil(n * p / 100) in integers; the cut-off is the spend at that rank from the top.
    cutoffs = [(tier, ranked[-(-len(ranked) * percent // 100) - 1]) for tier, percent in TIERS]
    return {
        customer: next((tier for tier, cutoff in cutoffs if spend >= cutoff), "low")
        if spend > 0
        else "none"
        for customer, spend in spend_365d.items()
    }
