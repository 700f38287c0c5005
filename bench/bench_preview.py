"""A definitions preview over the whole population, against just reading its facts.

    .venv/bin/python -m bench.bench_preview [--customers 200000]

Seeds customers through ingest's own SQL (tests/support/segmenter.py, in chunks) with a
few orders over 400 days and interactions over 60 days each, computes population stats and
evaluates everyone once under the defaults, as the service would. Then it times, in the
same run: (a) reading every customer's facts in the preview's chunks (`load_customers`, the read
model of shared/facts, over the population, nothing else: the floor a preview cannot go
below); (b) a preview of
a candidate whose population stats are the base's (one pass); (a) again; (c) one whose
stats must be computed (two passes); (a) again. Each preview is set against the mean of
the reads around it, in wall time and in this process's CPU (steadier on a shared
machine). The target is (b) <= 3x (a).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.bench_ingest import (
    forget_cache,
    stack_connection,
    stack_engine,
    stack_env,
    stack_redis,
)
from services.segmenter import population
from services.segmenter import repository as repo
from services.segmenter.preview import CHUNK, PreviewRunner
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.db.migrate import upgrade
from shared.definitions import repository as store
from shared.facts import FactsPlan, plan_for
from shared.segment_cache import SegmentCache
from shared.segmentation import load_definitions
from shared.segmentation.facts import Interaction
from tests.integration.test_preview import candidate
from tests.support.segmenter import History, evaluator, ruleset, seed

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SEED_CHUNK = 5000
INTERACTION_TYPES = ("page_view", "add_to_cart", "login")


def histories(first: int, n: int, rng: random.Random) -> list[History]:
    out = []
    for i in range(first, first + n):
        h = History(f"c{i:07d}")
        for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
            at = NOW - timedelta(seconds=rng.uniform(60, 400 * 86400))
            h.orders.append((at, Decimal(rng.randrange(500, 30_000)) / 100))
        for _ in range(rng.choice((0, 1, 2, 4, 8))):
            at = NOW - timedelta(seconds=rng.uniform(60, 60 * 86400))
            h.interactions.append(Interaction(at, rng.choice(INTERACTION_TYPES)))
        if not h.orders and not h.interactions:
            h.interactions.append(Interaction(NOW - timedelta(days=3), "login"))
        out.append(h)
    return out


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float  # of this process: steadier than wall time on a shared machine


async def timed(work: Awaitable[Any]) -> tuple[Any, Timed]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await work
    return result, Timed(time.perf_counter() - wall, time.process_time() - cpu)


async def read_all(engine: AsyncEngine, plan: FactsPlan) -> int:
    read, after = 0, ""
    while True:
        async with pg_connection(engine) as conn:
            ids = await repo.customer_ids_after(conn, after, CHUNK)
            if not ids:
                return read
            loaded = await repo.load_customers(conn, ids, NOW, plan)
        read += len(loaded)
        after = ids[-1]


async def preview(engine: AsyncEngine, content: str, base_version: int) -> dict[str, Any]:
    preview_id = str(uuid.uuid4())
    async with pg_connection(engine) as conn:
        await store.create_preview(
            conn,
            preview_id,
            actor="bench",
            content=content,
            content_hash=load_definitions(content).content_hash,
            base_version=base_version,
            samples=10,
            keep_seconds=3600,
        )
    assert await PreviewRunner(engine, FixedClock(NOW)).run_once()
    async with pg_connection(engine) as conn:
        job = await store.get_preview(conn, preview_id)
    assert job is not None
    assert job.status == "done", job.error
    assert job.result is not None
    return job.result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    args = parser.parse_args()
    env = stack_env()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = stack_engine(env, schema)
    redis = stack_redis(env)
    try:
        await upgrade(engine, schema)
        started = time.perf_counter()
        rng = random.Random(5)
        for first in range(0, args.customers, SEED_CHUNK):
            n = min(SEED_CHUNK, args.customers - first)
            await seed(engine, histories(first, n, rng), NOW)
        seeded = time.perf_counter() - started
        rules = await ruleset(engine)
        rules.population_required = True
        started = time.perf_counter()
        await population.recompute(engine, rules, NOW)
        ev = evaluator(engine, SegmentCache(redis, f"{schema}:"), FixedClock(NOW), rules)
        while await ev.evaluate_due():
            pass
        evaluated = time.perf_counter() - started
        async with pg_connection(engine) as conn:
            # As autovacuum would have by then: the walk reads with fresh statistics.
            await conn.execute(
                "VACUUM ANALYZE customer_aggregates, orders, interactions, customer_segments,"
                " customer_evaluations"
            )
        print(
            f"{args.customers} customers: seeded in {seeded:.1f} s,"
            f" stats and first evaluation in {evaluated:.1f} s"
        )

        # Each preview between two reads, against their mean: the machine's speed drifts.
        plan = plan_for(load_definitions(candidate()), heads=False)
        n, before = await timed(read_all(engine, plan))
        print(f"(a) read facts:              {fmt(before)}  ({n / before.wall_s:,.0f}/s)")
        for name, content, reused in (
            ("(b) preview, stats kept:    ", candidate(), True),
            ("(c) preview, stats computed:", candidate(vip_top_percent=10), False),
        ):
            result, took = await timed(preview(engine, content, rules.version))
            assert result["population"]["reused"] is reused
            _, after = await timed(read_all(engine, plan))
            wall = took.wall_s / ((before.wall_s + after.wall_s) / 2)
            cpu = took.cpu_s / ((before.cpu_s + after.cpu_s) / 2)
            print(f"{name} {fmt(took)}  {wall:4.2f}x the read ({cpu:4.2f}x its CPU)")
            print(f"(a) read facts:              {fmt(after)}")
            before = after
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
        await redis.aclose()
        conn = stack_connection(env)
        await forget_cache(conn.redis_url, f"{schema}:", tls=conn.redis_tls())


def fmt(t: Timed) -> str:
    return f"{t.wall_s:6.2f} s, CPU {t.cpu_s:6.2f} s"


if __name__ == "__main__":
    asyncio.run(main())
