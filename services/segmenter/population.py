"""Percentile cut-offs and RFM quintile edges, recomputed from the whole population.

One process at a time recomputes (an advisory lock); every process picks up the newest
stats within `stats_refresh_seconds`. When a cut-off moves, exactly the customers whose
value lies between its old and new position are queued: nobody else's segment can move.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.worker import Ruleset
from shared.db.engine import pg_connection
from shared.segmentation import (
    MetricValue,
    PopulationStats,
    compute_population_stats,
    population_sample,
)

log = structlog.get_logger("segmenter.population")

CHUNK = 2000


async def recompute(engine: AsyncEngine, ruleset: Ruleset, now: datetime) -> int | None:
    """Recompute the stats if no other process is; returns how many customers were queued,
    or None when another process holds the job."""
    defs = ruleset.definitions
    if not defs.population_metrics:
        return 0
    async with pg_connection(engine) as conn, conn.transaction():
        if not await repo.try_lock(conn, "population"):
            return None
        samples: dict[str, dict[str, MetricValue]] = {}
        after = ""
        while True:
            ids = await repo.customer_ids_after(conn, after, CHUNK)
            if not ids:
                break
            after = ids[-1]
            loaded_chunk = await repo.load_customers(
                conn, ids, now, with_interactions=ruleset.counts_interactions
            )
            for cid, loaded in loaded_chunk.items():
                samples[cid] = population_sample(defs, loaded.facts, now)
        columns = {m: [s[m] for s in samples.values()] for m in defs.population_metrics}
        stats = compute_population_stats(defs, columns)
        old = ruleset.population if ruleset.population_id is not None else None
        if old is not None and old.to_dict() == stats.to_dict():
            return 0
        stats_id = await repo.save_population_stats(
            conn, ruleset.version, now, len(samples), stats.to_dict()
        )
        # The first stats of a version the service evaluates under: nobody was evaluated
        # under it without them (the evaluator waits for them), so nobody needs moving.
        # Queuing everyone here would publish an activation's changes as "population" ones,
        # past its publish policy; its backfill re-evaluates them instead.
        is_first = old is None and ruleset.population_required
        affected = set() if is_first else moved_customers(ruleset, old, stats, samples)
        await repo.schedule(conn, [(cid, now) for cid in sorted(affected)], "population")
    ruleset.population, ruleset.population_id = stats, stats_id
    log.info(
        "population_recomputed", customers=len(samples), queued=len(affected), stats=stats.to_dict()
    )
    return len(affected)


def moved_customers(
    ruleset: Ruleset,
    old: PopulationStats | None,
    new: PopulationStats,
    samples: dict[str, dict[str, MetricValue]],
) -> set[str]:
    """Customers whose value lies between an old and a new position of some boundary."""
    defs = ruleset.definitions
    ranges: list[tuple[str, Any, Any]] = []
    for name, value in new.cutoffs.items():
        before = None if old is None else old.cutoffs.get(name)
        metric = defs.cutoffs[name].metric
        if before != value and metric is not None:
            ranges.append((metric, before, value))
    for name, edges in new.edges.items():
        previous: tuple[Any, ...] = () if old is None else tuple(old.edges.get(name, ()))
        for i, edge in enumerate(edges):
            before = previous[i] if i < len(previous) else None
            if before != edge:
                ranges.append((defs.scores[name].metric, before, edge))
    affected = set()
    for cid, sample in samples.items():
        for metric, before, after in ranges:
            seen: Any = sample.get(metric)
            if seen is None:
                continue
            if before is None or min(before, after) <= seen <= max(before, after):
                affected.add(cid)
                break
    return affected


async def refresh(engine: AsyncEngine, ruleset: Ruleset) -> bool:
    """Load newer stats computed by another process; True when they changed."""
    async with pg_connection(engine) as conn:
        latest = await repo.latest_population_stats(conn, ruleset.version)
    if latest is None or latest[0] == ruleset.population_id:
        return False
    ruleset.adopt_population(latest)
    return True
