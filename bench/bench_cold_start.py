"""How long a cold start takes until the value tiers are right, beside a raw PostgreSQL scan.

    .venv/bin/python -m bench.bench_cold_start [--customers 1000,10000]

For each N: one ingest and one segmenter process on an empty schema and new topics (the
segmenter starts with the statistics of no customers), then N customers' orders produced
to Kafka at once: one to three each, of log-normal amounts, one customer in ten only more
than a year ago (tests/support/value_tiers.py). Printed, in seconds from the first event
ingested (the first customer_aggregates row seen, polled every 20 ms): until all N are
ingested, and until every customer's value tier is the one their spend promises (computed
by the checker in tests/support/value_tiers.py, which shares no code with the segmenter).
Beside them, with the services stopped: one recompute of the statistics by the segmenter's
own code, and the raw floor, one SQL statement computing the three cut-offs from the orders.

Needs the stack (`bash deploy/stack.sh up`); uses its own schemas and topics, then drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text

from bench.bench_ingest import forget_cache, stack_connection, stack_engine, stack_env
from services.segmenter import definitions, population
from shared.db.engine import pg_connection
from shared.db.migrate import upgrade
from shared.events import OrderPlaced, encode_event
from shared.kafka import TopicSpec, delete_topics, dlq_topic, ensure_topics, make_producer
from shared.security import KafkaSecurity
from shared.segmentation import default_definitions
from tests.support.value_tiers import expected_value_tiers, spenders

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 600
RAW_CUTOFFS = """
    WITH spend AS (
        SELECT customer_id, sum(amount - refunded) AS s FROM orders
        WHERE cancelled_at IS NULL AND placed_at > now() - interval '365 days'
        GROUP BY customer_id HAVING sum(amount - refunded) > 0
    ), ranked AS (SELECT s, row_number() OVER (ORDER BY s DESC) AS r, count(*) OVER () AS n
                  FROM spend)
    SELECT min(s) FILTER (WHERE r <= ceil(n * 0.05)), min(s) FILTER (WHERE r <= ceil(n * 0.2)),
           min(s) FILTER (WHERE r <= ceil(n * 0.5)) FROM ranked
"""


async def produce(
    bootstrap: str, security: KafkaSecurity, topic: str, histories: list[Any]
) -> None:
    producer = make_producer(bootstrap, security=security, client_id="bench-cold-start")
    await producer.start()
    try:
        sent = []
        for h in histories:
            for i, (at, amount) in enumerate(h.orders):
                event = OrderPlaced(
                    event_id=f"{h.customer_id}-{i}",
                    customer_id=h.customer_id,
                    order_id=f"o{i}",
                    occurred_at=at,
                    amount=amount,
                    currency="EUR",
                )
                key = h.customer_id.encode()
                sent.append(await producer.send(topic, encode_event(event), key=key))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def until(engine: Any, sql: str, holds: Any, deadline: float, every: float) -> float:
    """The monotonic time at which `holds(rows of sql)` was first seen."""
    async with engine.connect() as conn:
        while time.monotonic() < deadline:
            rows = (await conn.execute(text(sql))).all()
            await conn.commit()  # a fresh snapshot each time
            if holds(rows):
                return time.monotonic()
            await asyncio.sleep(every)
    raise TimeoutError(sql)


async def one_size(env: dict[str, str], customers: int) -> dict[str, float]:
    stack = stack_connection(env)
    bootstrap, security = stack.kafka_bootstrap, stack.kafka_security()
    tag = uuid.uuid4().hex[:8]
    schema = f"bench_{tag}"
    orders, interactions, changes = (f"bench-{n}-{tag}" for n in ("orders", "int", "changes"))
    await ensure_topics(
        bootstrap, [TopicSpec(t, 4) for t in (orders, interactions, changes)], security=security
    )
    engine = stack_engine(env, schema)
    await upgrade(engine, schema)
    service_env = env | {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_REDIS_KEY_PREFIX": f"bench:{tag}:",
        "STREAMSEG_INGEST_ORDERS_TOPIC": orders,
        "STREAMSEG_INGEST_INTERACTIONS_TOPIC": interactions,
        "STREAMSEG_INGEST_GROUP_ID": f"bench-{tag}",
        "STREAMSEG_INGEST_OPS_PORT": "0",
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes,
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "PYTHONPATH": str(ROOT),
    }
    logs = ROOT / ".stack"
    logs.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, then only waited for
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env=service_env,
            stdout=(logs / f"bench-cold-start-{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name in ("ingest", "segmenter")
    ]
    histories, spend = spenders(customers, 11, datetime.now(UTC))
    expected = expected_value_tiers(spend)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        await until(engine, "SELECT 1 FROM population_stats", bool, deadline, 0.1)
        producing = asyncio.create_task(produce(bootstrap, security, orders, histories))
        any_row, count = (
            "SELECT 1 FROM customer_aggregates LIMIT 1",
            "SELECT count(*) FROM customer_aggregates",
        )
        first = await until(engine, any_row, bool, deadline, 0.02)
        ingested = await until(engine, count, lambda r: r[0][0] == customers, deadline, 0.1)
        await producing
        tiers = "SELECT customer_id, segment FROM customer_segments WHERE dimension = 'value_tier'"
        right = await until(engine, tiers, lambda r: dict(r) == expected, deadline, 0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    try:
        ruleset, _ = await definitions.start_ruleset(
            engine, default_definitions().source, file_named=False
        )
        await population.refresh(engine, ruleset)  # the same population: nothing is stored
        began = time.perf_counter()
        await population.recompute(engine, ruleset, datetime.now(UTC))
        recompute = time.perf_counter() - began
        async with pg_connection(engine) as conn:
            began = time.perf_counter()
            await conn.fetchrow(RAW_CUTOFFS)
            raw = time.perf_counter() - began
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
        await delete_topics(
            bootstrap,
            [orders, interactions, changes, dlq_topic(orders), dlq_topic(interactions)],
            security=security,
        )
        await forget_cache(stack.redis_url, f"bench:{tag}:", tls=stack.redis_tls())
    return {
        "ingested_s": ingested - first,
        "tiers_right_s": right - first,
        "recompute_s": recompute,
        "raw_sql_s": raw,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", default="1000,10000")
    args = parser.parse_args()
    # The in-process recompute logs its stats; only the figures are wanted here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    env = stack_env()
    print(
        f"{'customers':>9} {'all ingested s':>14} {'tiers right s':>13}"
        f" {'one recompute s':>15} {'raw SQL cut-offs s':>18}"
    )
    for n in (int(c) for c in args.customers.split(",")):
        f = await one_size(env, n)
        print(
            f"{n:>9} {f['ingested_s']:>14.2f} {f['tiers_right_s']:>13.2f}"
            f" {f['recompute_s']:>15.3f} {f['raw_sql_s']:>18.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
