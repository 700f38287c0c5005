"""Historical import throughput against PostgreSQL's raw COPY of the same rows, in one run.

    .venv/bin/python -m bench.bench_import [--orders 1000000] [--customers 50000] [--format csv]

1. generates a history of N order events (placements, 12% refunds, 8% cancellations; Zipf
   customers, log-normal amounts) over two years and writes it as one file;
2. raw COPY: the same rows, already typed in memory, into a bare scratch table with
   asyncpg's `copy_records_to_table` (no index, no constraint): the floor of writing them;
3. the importer: `python -m services.importer --orders FILE --until NOW --publish none
   --no-wait` in a fresh schema, every guarantee on (dedup ledger, order merge, aggregates,
   fact_changes, checkpoints), from reading the file to its last commit;
4. prints both rates in orders/s and the ratio (the goal: at least 1/3; 100,000/s the aim).

Needs PostgreSQL (`bash deploy/stack.sh up`); uses its own schema, then drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from bench.bench_ingest import stack_env
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("order_id", "customer_id", "type", "occurred_at", "amount", "currency")


def history(
    n: int, customers: int, seed: int
) -> list[tuple[str, str, str, datetime, Decimal, str]]:
    """N order events in time order: (order id, customer, type, time, amount, currency)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank**1.1) for rank in range(1, customers + 1)]
    who = rng.choices(range(customers), weights=weights, k=n)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    start = end - timedelta(days=730)
    span = (end - start).total_seconds()
    open_orders: dict[int, list[tuple[str, Decimal, str]]] = {}
    rows = []
    for i, c in enumerate(who):
        at = start + timedelta(seconds=int(span * i / n))
        cid = f"c{c:07d}"
        mine = open_orders.get(c)
        r = rng.random()
        if mine and r < 0.20:
            k = rng.randrange(len(mine))
            order_id, amount, currency = mine[k]
            if r < 0.08:
                mine.pop(k)
                rows.append((order_id, cid, "order_cancelled", at, amount, currency))
            else:
                part = (amount * rng.choice((25, 50, 100)) / 100).quantize(Decimal("0.01"))
                rows.append((order_id, cid, "order_refunded", at, part, currency))
            continue
        amount = Decimal(str(round(math.exp(rng.gauss(3.7, 1.0)), 2)))
        currency = rng.choices(("EUR", "USD", "GBP"), weights=(7, 2, 1))[0]
        order_id = f"o{i}"
        open_orders.setdefault(c, []).append((order_id, amount, currency))
        rows.append((order_id, cid, "order_placed", at, amount, currency))
    return rows


def write_file(rows: list[Any], path: Path, fmt: str) -> None:
    if fmt == "csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for o, c, t, at, a, cur in rows:
                w.writerow((o, c, t, at.isoformat(), str(a), cur))
    elif fmt == "jsonl":
        with path.open("wb") as f:
            for o, c, t, at, a, cur in rows:
                record = dict(zip(COLUMNS, (o, c, t, at.isoformat(), str(a), cur), strict=True))
                f.write(orjson.dumps(record) + b"\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "order_id": [r[0] for r in rows],
                "customer_id": [r[1] for r in rows],
                "type": [r[2] for r in rows],
                "occurred_at": pa.array([r[3] for r in rows], type=pa.timestamp("us", tz="UTC")),
                "amount": [str(r[4]) for r in rows],
                "currency": [r[5] for r in rows],
            }
        )
        pq.write_table(table, path)


async def raw_copy_rate(url: str, schema: str, rows: list[Any]) -> float:
    """Orders/s of COPY of the same rows (with an event id each, as imported) into a bare
    table."""
    records = [(f"e{i}", c, o, t, at, a, cur) for i, (o, c, t, at, a, cur) in enumerate(rows)]
    engine = create_engine(url, schema)
    try:
        async with pg_connection(engine) as conn:
            await conn.execute(
                "CREATE TABLE raw_copy (event_id text, customer_id text, order_id text,"
                " type text, occurred_at timestamptz, amount numeric(20, 4), currency text)"
            )
            started = time.perf_counter()
            for i in range(0, len(records), 20_000):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "raw_copy",
                        records=records[i : i + 20_000],
                        columns=(
                            "event_id",
                            "customer_id",
                            "order_id",
                            "type",
                            "occurred_at",
                            "amount",
                            "currency",
                        ),
                    )
            elapsed = time.perf_counter() - started
            await conn.execute("DROP TABLE raw_copy")
    finally:
        await engine.dispose()
    return len(records) / elapsed


def import_rate(env: dict[str, str], path: Path, log: Path) -> dict[str, Any]:
    until = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    with log.open("wb") as err:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.importer",
                "--orders",
                str(path),
                "--until",
                until,
                "--publish",
                "none",
                "--no-wait",
                "--rejects",
                str(path) + ".rejects.jsonl",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            check=True,
        ).stdout
    wall = time.perf_counter() - started
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    result["wall_seconds"] = wall
    return result


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--orders", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=50_000)
    p.add_argument("--format", default="csv", choices=("csv", "jsonl", "parquet"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk-rows", type=int, default=None)
    args = p.parse_args()
    env = stack_env()
    url = env["STREAMSEG_DATABASE_URL"]
    schema = f"bench_import_{uuid.uuid4().hex[:8]}"
    engine = create_engine(url, schema)
    await upgrade(engine, schema)
    try:
        t0 = time.perf_counter()
        rows = history(args.orders, args.customers, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"orders.{args.format}"
            write_file(rows, path, args.format)
            print(
                f"history: {len(rows):,} order events, {args.customers:,} customers,"
                f" {path.stat().st_size / 1e6:.0f} MB {args.format}"
                f" ({time.perf_counter() - t0:.1f} s to generate)",
                flush=True,
            )
            raw = await raw_copy_rate(url, schema, rows)
            print(f"raw COPY:  {raw:,.0f} orders/s", flush=True)
            run_env = dict(env, STREAMSEG_DATABASE_SCHEMA=schema, STREAMSEG_LOG_LEVEL="WARNING")
            if args.chunk_rows:
                run_env["STREAMSEG_IMPORTER_CHUNK_ROWS"] = str(args.chunk_rows)
            result = import_rate(run_env, path, Path(tmp) / "bench-import.log")
        rate = result["imported_this_time"] / result["elapsed_seconds"]
        print(
            f"importer:  {rate:,.0f} orders/s ({result['imported']:,} imported,"
            f" {result['customers']:,} customers, {result['elapsed_seconds']:.1f} s load,"
            f" {result['wall_seconds']:.1f} s wall)"
        )
        print(f"ratio:     {rate / raw:.3f} of raw COPY (goal >= 0.333)")
        print(f"load average before: {os.getloadavg()[0]:.1f}")
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
