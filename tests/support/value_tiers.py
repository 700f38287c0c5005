"""The value tiers the default definitions promise, recomputed from spends alone.

Shares no code with the segmenter: docs/segments.md says a `top_percent: p` cut-off is the
lowest spend among the top ceil(p% of n) of the n customers with a positive spend_365d, and
a customer is in the highest tier whose cut-off they reach.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal

from tests.support.segmenter import History

TIERS = (("vip", 5), ("high", 20), ("medium", 50))
DAY = timedelta(days=1)


def spenders(n: int, seed: int, now: datetime) -> tuple[list[History], dict[str, Decimal]]:
    """`n` customers with one to three orders of log-normal amounts; one in ten ordered only
    more than a year before `now` (no spend_365d). Returns them and their spend_365d."""
    rng = random.Random(seed)
    histories, spend = [], {}
    for i in range(n):
        lapsed = rng.random() < 0.1
        h = History(f"c{i:05d}")
        for _ in range(rng.randint(1, 3)):
            age = rng.uniform(400, 600) if lapsed else rng.uniform(1, 300)
            amount = Decimal(round(rng.lognormvariate(4, 1) * 100) + 1) / 100
            h.orders.append((now - age * DAY, amount))
        histories.append(h)
        recent = (amount for at, amount in h.orders if now - at < 365 * DAY)
        spend[h.customer_id] = sum(recent, Decimal(0))
    return histories, spend


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
