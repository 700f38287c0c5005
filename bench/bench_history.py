"""Ingest's cost per event as one customer's history grows, against a raw write measured in
the same run.

    .venv/bin/python -m bench.bench_history [--histories 0,1000,10000,100000] [--batches 200]

For each history size H: one customer gets H orders, then `--batches` batches of one new
order each for that customer are applied with ingest's own statements (the order upsert and
the aggregates in one statement, one transaction per batch, as the worker does), and the
median and p95 wall time per batch are printed. Beside it, the same number of one-row
upserts into a bare table: the floor that a round trip and a commit cost on this machine
today. A per-event cost that grows with H would show as a ratio growing with H.

Needs the stack (`bash deploy/stack.sh up`); uses its own schema, then drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from bench.bench_ingest import stack_engine, stack_env
from services.ingest import repository as repo
from shared.db.engine import pg_connection
from shared.db.migrate import upgrade

SEED_CHUNK = 5000


async def run(histories: list[int], batches: int) -> None:
    env = stack_env()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = stack_engine(env, schema)
    start = datetime.now(UTC) - timedelta(days=300)
    try:
        await upgrade(engine, schema)
        async with pg_connection(engine) as conn:
            await conn.execute("CREATE TABLE raw (k text PRIMARY KEY, n bigint)")
            print(
                f"{'history':>9} {'median ms':>10} {'p95 ms':>8} {'raw median ms':>14} {'ratio':>6}"
            )
            for h in histories:
                cid = f"c-{h}"
                for first in range(0, h, SEED_CHUNK):
                    chunk = [
                        repo.OrderChange(
                            cid,
                            f"seed-{i}",
                            placed_at=start + timedelta(seconds=i),
                            placed_event_id=f"e-seed-{i}",
                            amount=Decimal("10"),
                        )
                        for i in range(first, min(h, first + SEED_CHUNK))
                    ]
                    async with conn.transaction():
                        await repo.apply_orders(conn, chunk)
                await conn.execute("ANALYZE orders")
                timings = []
                for b in range(batches):
                    change = repo.OrderChange(
                        cid,
                        f"new-{b}",
                        placed_at=start + timedelta(days=200, seconds=b),
                        placed_event_id=f"e-new-{b}",
                        amount=Decimal("5"),
                    )
                    statements = repo.touch_args(
                        [repo.CustomerTouch(cid, last_event_at=change.placed_at)], [cid], [change]
                    )
                    began = time.perf_counter()
                    async with conn.transaction():
                        await repo.apply_batch(conn, statements)
                    timings.append(time.perf_counter() - began)
                raw = []
                for b in range(batches):
                    began = time.perf_counter()
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO raw VALUES ($1, 1) ON CONFLICT (k) DO UPDATE"
                            " SET n = raw.n + 1",
                            f"{cid}-{b % 10}",
                        )
                    raw.append(time.perf_counter() - began)
                med = statistics.median(timings) * 1000
                p95 = sorted(timings)[int(len(timings) * 0.95)] * 1000
                raw_med = statistics.median(raw) * 1000
                print(f"{h:>9} {med:>10.3f} {p95:>8.3f} {raw_med:>14.3f} {med / raw_med:>6.2f}")
    finally:
        async with engine.begin() as sa:
            await sa.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="0,1000,10000,100000")
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run([int(h) for h in args.histories.split(",")], args.batches))


if __name__ == "__main__":
    main()
