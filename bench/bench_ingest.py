"""Ingest throughput against the limits of this machine, measured in one run.

    .venv/bin/python -m bench.bench_ingest [--events 200000] [--customers 50000]

1. produces N realistic events (skewed customers, heavy-tailed order values) to Kafka;
2. measures the raw aiokafka consume-and-decode rate on those records;
3. measures the raw PostgreSQL upsert rate (unnest batches into a one-table upsert);
4. measures the sustained events/s of one ingest worker process with every guarantee on;
5. prints the three rates, the worker's ratio to each raw rate, and the CPU per event of
   the worker and of its PostgreSQL backends.

Needs the stack (`bash deploy/stack.sh up`); uses its own topics and schema, then drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import upgrade
from shared.events import decode_event, encode_event
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.kafka import TopicSpec, delete_topics, dlq_topic, ensure_topics, make_producer
from shared.redis import make_redis
from shared.security import NO_REDIS_TLS, PLAINTEXT, PREFER, KafkaSecurity, PostgresTls, RedisTls
from shared.settings import ConnectionSettings
from shared.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4


def stack_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/stack.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env.setdefault(name, value)
    return env


def stack_connection(env: dict[str, str]) -> ConnectionSettings:
    """The connection settings in `env` (TLS, SASL and secret files included), read as the
    services started with `env` read them."""
    with mock.patch.dict(os.environ, env, clear=True):
        return ConnectionSettings()


@functools.cache
def local_connection() -> ConnectionSettings:
    """`stack_connection` of this environment and the stack's, read once a run."""
    return stack_connection(stack_env())


async def drop_schema(url: str, schema: str) -> None:
    """Drop a benchmark's schema and everything in it."""
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def stack_engine(env: dict[str, str], schema: str, **options: Any) -> AsyncEngine:
    """An engine on the stack's PostgreSQL as `env` configures it."""
    stack = stack_connection(env)
    return create_engine(stack.database_url, schema, tls=stack.postgres_tls(), **options)


def stack_redis(env: dict[str, str], **options: Any) -> Redis:
    """A client of the stack's Redis as `env` configures it."""
    stack = stack_connection(env)
    return make_redis(stack.redis_url, tls=stack.redis_tls(), **options)


async def produce(
    bootstrap: str,
    orders: str,
    interactions: str,
    n: int,
    customers: int,
    span_days: float,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    # A live stream: events of the last `span_days`, so every interaction lands in the
    # rolling windows, as it does in steady state.
    end = datetime.now(UTC) - timedelta(minutes=1)
    work = Workload(seed=7, customers=customers, start=end - timedelta(days=span_days), end=end)
    producer = make_producer(bootstrap, security=security, client_id="bench-producer")
    await producer.start()
    try:
        pending = []
        for ev in work.events(n):
            topic = orders if isinstance(ev, ORDER_EVENT_CLASSES) else interactions
            pending.append(
                await producer.send(topic, encode_event(ev), key=ev.customer_id.encode())
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_consume_rate(
    bootstrap: str, topics: list[str], n: int, *, security: KafkaSecurity = PLAINTEXT
) -> float:
    consumer = AIOKafkaConsumer(
        **security.client_options(),
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=5000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(PARTITIONS)])
        seen = 0
        started = time.perf_counter()
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                for r in records:
                    decode_event(r.value)
                seen += sum(1 for _ in records)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def raw_upsert_rate(
    url: str, schema: str, n: int, customers: int, *, tls: PostgresTls = PREFER
) -> float:
    engine = create_engine(url, schema, tls=tls)
    try:
        async with engine.begin() as ddl:
            await ddl.execute(
                text("CREATE TABLE bench_upsert (k text PRIMARY KEY, n bigint, at timestamptz)")
            )
        batch = 5000
        now = datetime.now(UTC)
        started = time.perf_counter()
        async with pg_connection(engine) as conn:
            for i in range(0, n, batch):
                keys = sorted({f"c{(i + j) * 7919 % customers:07d}" for j in range(batch)})
                async with conn.transaction():
                    await conn.execute(
                        """
                        INSERT INTO bench_upsert AS b (k, n, at)
                        SELECT k, 1, $2 FROM unnest($1::text[]) AS u(k)
                        ON CONFLICT (k) DO UPDATE SET n = b.n + 1, at = EXCLUDED.at
                        """,
                        keys,
                        now,
                    )
        return n / (time.perf_counter() - started)
    finally:
        await engine.dispose()


async def forget_cache(url: str, prefix: str, *, tls: RedisTls = NO_REDIS_TLS) -> None:
    """Delete a run's cache documents, so runs do not pile up in the shared Redis."""
    redis = make_redis(url, tls=tls, timeout_seconds=5)
    try:
        keys = [k async for k in redis.scan_iter(match=prefix + "*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
    finally:
        await redis.aclose()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WorkerRun:
    events_per_s: float
    # CPU per event of the worker process and of its PostgreSQL backends: steadier than
    # the rate on a shared machine, and where their sum is close to the elapsed time the
    # two stages are not overlapping.
    python_cpu_us_per_event: float
    pg_cpu_us_per_event: float


async def worker_rate(env: dict[str, str], schema: str, n: int, log: Path) -> WorkerRun:
    engine = stack_engine(env, schema)
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled
        [sys.executable, "-m", "services.ingest"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        first: tuple[float, int, float, dict[int, float]] | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited with {proc.returncode}; read {log}")
            async with engine.connect() as conn:
                done = (
                    await conn.execute(
                        text("SELECT COALESCE(sum(next_offset), 0) FROM ingest_offsets")
                    )
                ).scalar_one()
                backends = await _backends(conn)
            now = time.perf_counter()
            if first is None and done > 0:
                pg = {pid: cpu_seconds(pid) for pid in backends}
                first = (now, int(done), cpu_seconds(proc.pid), pg)
            if done >= n:
                assert first is not None
                events = n - first[1]
                pg_cpu = sum(cpu_seconds(pid) - first[3].get(pid, 0.0) for pid in backends)
                return WorkerRun(
                    events / (now - first[0]),
                    (cpu_seconds(proc.pid) - first[2]) / events * 1e6,
                    pg_cpu / events * 1e6,
                )
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        await engine.dispose()


async def _backends(conn: AsyncConnection) -> list[int]:
    """PostgreSQL backends of ingest workers started lately: the one under test, on a
    machine that runs no other ingest (the benchmark's own precondition)."""
    rows = await conn.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'ingest'"
            " AND backend_start > now() - interval '10 minutes' AND pid <> pg_backend_pid()"
        )
    )
    return [int(r[0]) for r in rows]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--span-days", type=float, default=7.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env = stack_env()
    stack = stack_connection(env)
    bootstrap, url, security = stack.kafka_bootstrap, stack.database_url, stack.kafka_security()
    tag = uuid.uuid4().hex[:8]
    orders, interactions, schema = (
        f"bench-orders-{tag}",
        f"bench-interactions-{tag}",
        f"bench_{tag}",
    )
    topics = [orders, interactions]
    await ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS) for t in topics], security=security)
    engine = stack_engine(env, schema)
    await upgrade(engine, schema)
    try:
        t0 = time.perf_counter()
        await produce(
            bootstrap,
            orders,
            interactions,
            args.events,
            args.customers,
            args.span_days,
            security=security,
        )
        print(f"produced {args.events} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        consume = await raw_consume_rate(bootstrap, topics, args.events, security=security)
        upsert = await raw_upsert_rate(
            url, schema, args.events, args.customers, tls=stack.postgres_tls()
        )
        worker_env = env | {
            "STREAMSEG_DATABASE_SCHEMA": schema,
            "STREAMSEG_INGEST_ORDERS_TOPIC": orders,
            "STREAMSEG_INGEST_INTERACTIONS_TOPIC": interactions,
            "STREAMSEG_INGEST_GROUP_ID": f"bench-{tag}",
            "STREAMSEG_INGEST_OPS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }
        run = await worker_rate(
            worker_env, schema, args.events, ROOT / ".stack" / "bench-ingest.log"
        )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
        await delete_topics(
            bootstrap, [*topics, *(dlq_topic(t) for t in topics)], security=security
        )
    figures = {
        "events": args.events,
        "customers": args.customers,
        "span_days": args.span_days,
        "raw_consume_decode_per_s": round(consume),
        "raw_pg_upsert_rows_per_s": round(upsert),
        "worker_events_per_s": round(run.events_per_s),
        "worker_vs_raw_consume": round(run.events_per_s / consume, 3),
        "worker_vs_raw_upsert": round(run.events_per_s / upsert, 3),
        "worker_python_cpu_us_per_event": round(run.python_cpu_us_per_event, 1),
        "worker_pg_cpu_us_per_event": round(run.pg_cpu_us_per_event, 1),
    }
    for name, value in figures.items():
        print(f"{name:28s} {value}")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())
