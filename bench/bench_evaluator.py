"""Throughput of one segmenter evaluator alone, without ingest or Kafka beside it.

    .venv/bin/python -m bench.bench_evaluator [--customers 5000]

Seeds customers through ingest's own SQL (tests/support/segmenter.py), then times the
first evaluation of all of them (every segment is a change: history, outbox, Redis) and a
second, steady-state one (nothing changed). Prints customers/s, and the time per repository
call and per Redis call (the stale mark before commit, the documents after).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

import services.segmenter.queue as queue
import services.segmenter.repository as repo
from bench.bench_ingest import stack_env
from services.ingest import repository as ingest
from shared.clock import FixedClock
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import upgrade
from shared.redis import make_redis
from shared.segment_cache import SegmentCache
from tests.integration.test_segmenter import NOW, random_histories
from tests.support.segmenter import evaluator, ruleset, seed

SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started

    return wrapper


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    args = parser.parse_args()
    for module, name in (
        (queue, "lease_due"),
        (queue, "settle"),
        (queue, "release_leases"),
        (repo, "load_leased"),
        (repo, "save_state"),
        (repo, "insert_changes"),
        (repo, "schedule"),
        (SegmentCache, "mark_stale"),
        (SegmentCache, "put_many"),
    ):
        setattr(module, name, timed(name, getattr(module, name)))
    env = stack_env()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(env["STREAMSEG_DATABASE_URL"], schema)
    redis = make_redis(env["STREAMSEG_REDIS_URL"])
    try:
        await upgrade(engine, schema)
        histories = random_histories(args.customers, 1, NOW)
        await seed(engine, histories, NOW)
        ev = evaluator(
            engine, SegmentCache(redis, f"{schema}:"), FixedClock(NOW), await ruleset(engine)
        )
        for phase in ("first", "steady"):
            if phase == "steady":
                async with pg_connection(engine) as conn, conn.transaction():
                    ids = [h.customer_id for h in histories]
                    await ingest.mark_for_segmentation(conn, ids, NOW, [NOW] * len(ids))
            SPENT.clear()
            started = time.perf_counter()
            while await ev.evaluate_due():
                pass
            elapsed = time.perf_counter() - started
            redis_s = {k: SPENT.pop(k, 0.0) for k in ("mark_stale", "put_many")}
            db = sum(SPENT.values())
            calls = sorted(SPENT.items(), key=lambda kv: -kv[1])
            print(
                f"{phase:7s} {args.customers / elapsed:8.0f} customers/s"
                f"  PostgreSQL {db / elapsed:4.0%} of the time:"
                f" {', '.join(f'{k} {v:.2f}s' for k, v in calls)};"
                f" Redis {', '.join(f'{k} {v:.3f}s' for k, v in redis_s.items())}"
            )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
        keys = [k async for k in redis.scan_iter(match=f"{schema}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
