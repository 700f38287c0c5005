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
import contextlib
import csv
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from bench.bench_ingest import cpu_seconds, local_connection, stack_env
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


@dataclass(frozen=True)
class Rate:
    orders_per_s: float
    # CPU per order of the client and of its PostgreSQL backends: steadier than the rate
    # on a shared machine.
    client_cpu_us: float
    pg_cpu_us: float


async def raw_copy_rate(url: str, schema: str, rows: list[Any], *, keyed: bool) -> Rate:
    """COPY of the same rows (with an event id each, as imported) into a scratch table:
    bare (`keyed` False), or with the orders table's primary key (customer, order id;
    placements only, one row per order, as `orders` holds them)."""
    records = [(f"e{i}", c, o, t, at, a, cur) for i, (o, c, t, at, a, cur) in enumerate(rows)]
    if keyed:
        records = [r for r in records if r[3] == "order_placed"]
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
    key = ", PRIMARY KEY (customer_id, order_id)" if keyed else ""
    try:
        async with pg_connection(engine) as conn:
            await conn.execute(
                "CREATE TABLE raw_copy (event_id text, customer_id text, order_id text,"
                f" type text, occurred_at timestamptz, amount numeric(20, 4), currency text{key})"
            )
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            pg_before, cpu_before = cpu_seconds(backend), time.process_time()
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
            pg_cpu = cpu_seconds(backend) - pg_before
            client_cpu = time.process_time() - cpu_before
            await conn.execute("DROP TABLE raw_copy")
    finally:
        await engine.dispose()
    n = len(records)
    return Rate(n / elapsed, client_cpu / n * 1e6, pg_cpu / n * 1e6)


async def import_rate(
    env: dict[str, str], url: str, schema: str, path: Path, log: Path
) -> tuple[dict[str, Any], Rate]:
    """The importer as a process, its own CPU from its rusage, its backends' sampled."""
    until = datetime.now(UTC).isoformat()
    command = [
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
    ]
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
    out_path = log.with_suffix(".out")
    seen: dict[int, float] = {}
    try:
        with log.open("wb") as err, out_path.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)  # noqa: ASYNC220
            while proc.poll() is None:
                async with engine.connect() as conn:
                    pids = (
                        await conn.execute(
                            text(
                                "SELECT pid FROM pg_stat_activity"
                                " WHERE application_name = 'importer'"
                                " AND backend_start > now() - interval '30 minutes'"
                            )
                        )
                    ).scalars()
                    for pid in pids:
                        with contextlib.suppress(OSError):
                            seen[int(pid)] = cpu_seconds(int(pid))
                await asyncio.sleep(0.05)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        await engine.dispose()
    if proc.returncode != 0:
        raise RuntimeError(f"the importer exited with {proc.returncode}: {log.read_text()[-2000:]}")  # noqa: ASYNC240
    result: dict[str, Any] = orjson.loads(out_path.read_bytes().splitlines()[-1])
    n = result["imported_this_time"]
    client = usage.ru_utime + usage.ru_stime
    rate = Rate(n / result["elapsed_seconds"], client / n * 1e6, sum(seen.values()) / n * 1e6)
    return result, rate


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
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
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
            load = os.getloadavg()[0]
            raw = await raw_copy_rate(url, schema, rows, keyed=False)
            keyed = await raw_copy_rate(url, schema, rows, keyed=True)
            run_env = dict(env, STREAMSEG_DATABASE_SCHEMA=schema, STREAMSEG_LOG_LEVEL="WARNING")
            if args.chunk_rows:
                run_env["STREAMSEG_IMPORTER_CHUNK_ROWS"] = str(args.chunk_rows)
            result, imp = await import_rate(
                run_env, url, schema, path, Path(tmp) / "bench-import.log"
            )
        for name, r in (
            ("raw COPY, bare table", raw),
            ("raw COPY, orders' key", keyed),
            ("importer", imp),
        ):
            print(
                f"{name:22} {r.orders_per_s:>9,.0f} orders/s   CPU per order:"
                f" client {r.client_cpu_us:5.1f} us + PostgreSQL {r.pg_cpu_us:5.1f} us"
            )
        print(
            f"importer: {result['imported']:,} imported, {result['customers']:,} customers,"
            f" {result['elapsed_seconds']:.1f} s from first row to last commit"
        )
        print(
            f"ratio: {imp.orders_per_s / raw.orders_per_s:.3f} of raw COPY into a bare table,"
            f" {imp.orders_per_s / keyed.orders_per_s:.3f} of COPY into a keyed one"
            " (goal >= 0.333)"
        )
        print(f"load average before: {load:.1f}")
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
