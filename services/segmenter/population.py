"""Percentile cut-offs and RFM quintile edges, recomputed from the whole population.

One process at a time recomputes (an advisory lock); every process picks up the newest
stats within `stats_refresh_seconds`. When a cut-off moves, exactly the customers whose
value lies between its old and new position are queued: nobody else's segment can move.
When to recompute is `recompute_due` (docs/segments.md, "Population statistics").
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.ruleset import Ruleset
from services.segmenter.settings import SegmenterSettings
from shared.clock import Clock, is_running
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.facts import plan_for
from shared.retry import Backoff, Retry, repeat_until_stopped
from shared.segmentation import (
    Definitions,
    MetricValue,
    PopulationStats,
    compute_population_stats,
    population_sample,
)

log = structlog.get_logger("segmenter.population")

CHUNK = 2000
# A population this much larger or smaller than the one the stats were computed from has
# them recomputed (subject to population_min_interval_seconds).
POPULATION_CHANGE_PERCENT = 10

Reason = Literal["no_stats", "population_changed", "interval"]


def recompute_due(
    *,
    has_stats: bool,
    stats_customers: int | None,
    customers: int | None,
    seconds_since_recompute: float,
    min_interval_seconds: float,
    interval_seconds: float,
) -> Reason | None:
    """Why the stats in use should be recomputed now, or None if they should not.

    `stats_customers` is the population they were computed from, `customers` the population
    now (None for either: not known, so no comparison); `seconds_since_recompute` runs from
    when they were computed, or from this process's last attempt if later. Stats that do not
    exist are computed at once; a population changed by POPULATION_CHANGE_PERCENT or more
    (or from none to some) is recomputed at most every `min_interval_seconds`; any other
    every `interval_seconds`."""
    if not has_stats:
        return "no_stats"
    if seconds_since_recompute >= interval_seconds:
        return "interval"
    if customers is None or stats_customers is None:
        return None
    if seconds_since_recompute < min_interval_seconds:
        return None
    change = abs(customers - stats_customers)
    if change > 0 and change * 100 >= POPULATION_CHANGE_PERCENT * stats_customers:
        return "population_changed"
    return None


async def recompute(
    engine: AsyncEngine, ruleset: Ruleset, now: datetime, *, zone: tzinfo = UTC
) -> int | None:
    """Recompute the stats if no other process is; returns how many customers were queued,
    or None when another process holds the job."""
    # Taken together before any await: the follow loop may switch the ruleset meanwhile, and
    # stats of these definitions must not be stored, or adopted, as another version's.
    defs, version = ruleset.definitions, ruleset.version
    old = ruleset.population if ruleset.population_id is not None else None
    if not defs.population_metrics:
        return 0
    # Only what the stats need: reading every event metric of every customer would cost
    # several times more, and it runs beside the evaluation loops.
    plan = plan_for(defs, heads=False, only=defs.population_metrics)
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
            loaded_chunk = await repo.load_customers(conn, ids, now, plan)
            for cid, facts in loaded_chunk.items():
                samples[cid] = population_sample(defs, facts, now, zone=zone)
        columns = {m: [s[m] for s in samples.values()] for m in defs.population_metrics}
        stats = compute_population_stats(defs, columns)
        if old is not None and old.to_dict() == stats.to_dict():
            return 0
        stats_id = await repo.save_population_stats(
            conn, version, now, len(samples), stats.to_dict()
        )
        # The first stats of a version the service evaluates under: nobody was evaluated
        # under it without them (the evaluator waits for them), so nobody needs moving.
        # Queuing everyone here would publish an activation's changes as "population" ones,
        # past its publish policy; its backfill re-evaluates them instead.
        is_first = old is None and ruleset.population_required
        affected = set() if is_first else moved_customers(defs, old, stats, samples)
        await repo.schedule(conn, [(cid, now) for cid in sorted(affected)], "population")
    if ruleset.version == version:
        ruleset.population, ruleset.population_id = stats, stats_id
    log.info(
        "population_recomputed",
        version=version,
        customers=len(samples),
        queued=len(affected),
        stats=stats.to_dict(),
    )
    return len(affected)


def moved_customers(
    defs: Definitions,
    old: PopulationStats | None,
    new: PopulationStats,
    samples: dict[str, dict[str, MetricValue]],
) -> set[str]:
    """Customers whose value lies between an old and a new position of some boundary.
    Without old stats that is every customer with a value of some population metric: they
    were evaluated with unresolved cut-offs and edges, if at all."""
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
    version = ruleset.version
    async with pg_connection(engine) as conn:
        latest = await repo.latest_population_stats(conn, version)
    if latest is None or latest[0] == ruleset.population_id or ruleset.version != version:
        return False  # (a switch meanwhile adopted the new version's stats itself)
    ruleset.adopt_population(latest)
    return True


async def population_loop(
    engine: AsyncEngine,
    ruleset: Ruleset,
    clock: Clock,
    settings: SegmenterSettings,
    stopping: asyncio.Event,
) -> None:
    """Every `stats_refresh_seconds`: pick up stats stored by others, then recompute them
    here if `recompute_due` says so (whichever process takes the lock first does)."""
    loop = asyncio.get_running_loop()
    last_recompute = loop.time()
    # The stats in use whose population `stats_customers` is; any other id (a recompute
    # here or elsewhere, stats copied for a newly activated version, none after a switch)
    # is looked up again, so every version change is seen through it.
    counted_id: int | None = None
    stats_customers: int | None = None

    async def count_anew() -> bool:
        """Look up the population of the stats in use if they are new here; True if so."""
        nonlocal counted_id, stats_customers
        if ruleset.population_id == counted_id:
            return False
        counted_id, stats_customers = ruleset.population_id, None
        if counted_id is not None:
            async with pg_connection(engine) as conn:
                stats_customers = await repo.population_stats_customers(conn, counted_id)
        return True

    async def step() -> None:
        nonlocal last_recompute, stats_customers
        # First: after a switch to another version, its stats may have been copied.
        await refresh(engine, ruleset)
        if await count_anew() and counted_id is not None:
            last_recompute = loop.time()  # stored by another process, or copied
        if not ruleset.definitions.population_metrics or not is_running(clock):
            return
        since = loop.time() - last_recompute
        customers = None
        if counted_id is not None and since >= settings.population_min_interval_seconds:
            async with pg_connection(engine) as conn:
                customers = await store.customer_count(conn)
        reason = recompute_due(
            has_stats=ruleset.population_id is not None,
            stats_customers=stats_customers,
            customers=customers,
            seconds_since_recompute=since,
            min_interval_seconds=settings.population_min_interval_seconds,
            interval_seconds=settings.population_interval_seconds,
        )
        if reason is None:
            return
        log.info(
            "population_recompute_due",
            reason=reason,
            version=ruleset.version,
            stats_customers=stats_customers,
            customers=customers,
        )
        await recompute(engine, ruleset, clock.now(), zone=settings.birthday_zone)
        last_recompute = loop.time()
        if not await count_anew() and customers is not None:
            # Nothing stored (the stats came out the same): the change is accounted for.
            stats_customers = customers

    await repeat_until_stopped(
        step,
        settings.stats_refresh_seconds,
        stopping,
        Retry(Backoff(0.2, 5.0), "population", stopping),
    )
