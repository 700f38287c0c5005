"""Latency of POST /v1/events for batches of 100 events, under open-loop load, beside the
raw Kafka produce latency of the same records in the same run.

    .venv/bin/python -m bench.bench_intake [--rate 100] [--duration 30] [--batch 100]

1. creates three topics of its own (orders, interactions, customers; 4 partitions) on the
   dev stack's Kafka, a schema with every migration, and a key with `events:write`;
2. builds 200 distinct bodies of `--batch` events each (orders and interactions from the
   workload generator, a tenth customer traits events);
3. raw baseline: with the producer the API uses (`shared.kafka.make_producer`: idempotent,
   acks=all, linger `services.api.publisher.LINGER_MS`), sends the records of one body at
   a time at `--rate` bodies per second, open loop, and times each from its due time
   until Kafka acknowledged all of them: what producing alone costs;
4. runs the API as `python -m services.api` in a subprocess and POSTs the bodies at
   `--rate` per second, open loop (a request is due at its time whether earlier ones have
   answered or not; latency runs from that time), over kept-alive connections, with a
   client that speaks HTTP/1.1 itself (bench/bench_api.py says why);
5. prints p50/p95/p99/max of both, the API's CPU per request, and whether p99 is at most
   `--max-p99-ms` (20).

Nothing consumes the topics (ingest's cost is bench_ingest's); they and the schema are
removed at the end. The generator and the API share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.bench_api import cpu_seconds, free_port, summary, wait_ready
from bench.bench_ingest import drop_schema, local_connection, stack_env
from services.api.auth import repository as keys_repository
from services.api.auth.keys import hash_key, new_key
from services.api.publisher import LINGER_MS
from shared.db.engine import create_engine, driver_connection
from shared.db.migrate import upgrade
from shared.events import encode_event
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.kafka import TopicSpec, delete_topics, ensure_topics, make_producer
from shared.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
BODIES = 200
LATE_SECONDS = 0.005
IDLE_SECONDS = 4.0


def batches(size: int, topics: dict[str, str]) -> list[list[tuple[str, bytes, bytes]]]:
    """BODIES batches of `size` records (topic, key, value), distinct event ids."""
    end = datetime.now(UTC) - timedelta(minutes=1)
    work = Workload(seed=11, customers=5000, start=end - timedelta(days=60), end=end)
    out = []
    for b in range(BODIES):
        records = []
        for i, event in enumerate(work.events(size)):
            if i % 10 == 9:
                traits = {
                    "type": "customer_traits",
                    "event_id": f"bench-traits-{b}-{i}",
                    "customer_id": event.customer_id,
                    "occurred_at": event.occurred_at.isoformat(),
                    "traits": {"country": "DE", "custom": {"tier": "gold"}},
                }
                records.append(
                    (topics["customers"], event.customer_id.encode(), orjson.dumps(traits))
                )
                continue
            topic = (
                topics["orders"]
                if isinstance(event, ORDER_EVENT_CLASSES)
                else topics["interactions"]
            )
            records.append((topic, event.customer_id.encode(), encode_event(event)))
        out.append(records)
    return out


def body_of(records: list[tuple[str, bytes, bytes]]) -> bytes:
    return b'{"events":[' + b",".join(value for _, _, value in records) + b"]}"


async def open_loop(
    one: Callable[[int], Awaitable[bool]], rate: float, duration: float
) -> dict[str, float]:
    """Call `one(i)` at `rate` per second for `duration` s; latency from each due time."""
    latencies: list[float] = []
    from_send: list[float] = []
    errors = ok = late = 0
    tasks: set[asyncio.Task[None]] = set()

    async def timed(i: int, due: float) -> None:
        nonlocal errors, ok
        began = time.perf_counter()
        try:
            is_ok = await one(i)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            return
        answered = time.perf_counter()
        latencies.append(answered - due)
        from_send.append(answered - began)
        ok += is_ok
        errors += not is_ok

    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.05
    total = int(rate * duration)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -LATE_SECONDS:
            late += 1
        task = loop.create_task(timed(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    elapsed = time.perf_counter() - start
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return summary(rate, total, latencies, from_send, errors, ok, late, elapsed)


async def raw_produce(
    bootstrap: str, bodies: list[list[tuple[str, bytes, bytes]]], rate: float, duration: float
) -> dict[str, float]:
    producer = make_producer(
        bootstrap,
        security=local_connection().kafka_security(),
        client_id="bench-intake-raw",
        linger_ms=LINGER_MS,
    )
    await producer.start()
    try:

        async def one(i: int) -> bool:
            futures = [
                await producer.send(topic, value=value, key=key)
                for topic, key, value in bodies[i % len(bodies)]
            ]
            await asyncio.gather(*futures)
            return True

        await open_loop(one, rate, 3)  # warm-up: connections, metadata
        return await open_loop(one, rate, duration)
    finally:
        await producer.stop()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.idle_since = reader, writer, 0.0

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(head[9:12]), await self.reader.readexactly(length)


async def api_load(
    port: int, key: str, bodies: list[bytes], rate: float, duration: float, expected: int
) -> dict[str, Any]:
    requests = [
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]
    idle: list[Connection] = []
    statuses: Counter[int] = Counter()
    refusals: list[str] = []

    async def one(i: int) -> bool:
        conn = None
        while idle:
            candidate = idle.pop()
            if time.perf_counter() - candidate.idle_since < IDLE_SECONDS:
                conn = candidate
                break
            candidate.writer.close()
        if conn is None:
            conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
        try:
            status, body = await conn.request(requests[i % len(requests)])
        except (OSError, asyncio.IncompleteReadError):
            conn.writer.close()
            raise
        conn.idle_since = time.perf_counter()
        idle.append(conn)
        statuses[status] += 1
        is_ok = status == 202 and orjson.loads(body)["accepted"] == expected
        if not is_ok and len(refusals) < 3:
            refusals.append(f"{status} {body[:300].decode(errors='replace')}")
        return is_ok

    try:
        await open_loop(one, rate, 3)  # warm-up
        statuses.clear()
        result: dict[str, Any] = dict(await open_loop(one, rate, duration))
        result["statuses"] = {str(status): n for status, n in sorted(statuses.items())}
        result["refusals"] = refusals
        return result
    finally:
        for conn in idle:
            conn.writer.close()


async def prepare(url: str, schema: str) -> str:
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
    try:
        await upgrade(engine, schema)
        async with engine.begin() as sa_conn:
            conn = await driver_connection(sa_conn)
            key_id, key = new_key()
            await keys_repository.insert_key(conn, key_id, "bench", hash_key(key), ["events:write"])
    finally:
        await engine.dispose()
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="batches per second")
    parser.add_argument("--duration", type=float, default=30, help="seconds per phase")
    parser.add_argument("--batch", type=int, default=100, help="events per batch")
    parser.add_argument("--max-p99-ms", type=float, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env = stack_env()
    tag = uuid.uuid4().hex[:8]
    schema = f"bench_intake_{tag}"
    topics = {
        name: f"bench-intake-{name}-{tag}" for name in ("orders", "interactions", "customers")
    }
    bootstrap, url = env["STREAMSEG_KAFKA_BOOTSTRAP"], env["STREAMSEG_DATABASE_URL"]
    asyncio.run(
        ensure_topics(
            bootstrap,
            [TopicSpec(t, 4) for t in topics.values()],
            security=local_connection().kafka_security(),
        )
    )
    key = asyncio.run(prepare(url, schema))
    records = batches(args.batch, topics)
    port = free_port()
    api_env = env | {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_API_PORT": str(port),
        "STREAMSEG_LOG_LEVEL": "WARNING",
        "STREAMSEG_INGEST_ORDERS_TOPIC": topics["orders"],
        "STREAMSEG_INGEST_INTERACTIONS_TOPIC": topics["interactions"],
        "STREAMSEG_INGEST_CUSTOMERS_TOPIC": topics["customers"],
        "PYTHONPATH": str(ROOT),
    }
    log = ROOT / ".stack" / "bench-intake.log"
    log.parent.mkdir(exist_ok=True)
    figures: dict[str, Any] = {
        "rate_per_s": args.rate,
        "batch_events": args.batch,
        "machine_load_1m_before": round(os.getloadavg()[0], 2),
    }
    try:
        raw = asyncio.run(raw_produce(bootstrap, records, args.rate, args.duration))
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api"],
                cwd=ROOT,
                env=api_env,
                stdout=out,
                stderr=out,
            )
            try:
                wait_ready(f"http://127.0.0.1:{port}", proc)
                bodies = [body_of(r) for r in records]
                cpu_before = cpu_seconds(proc.pid)
                api = asyncio.run(api_load(port, key, bodies, args.rate, args.duration, args.batch))
                api_cpu = cpu_seconds(proc.pid) - cpu_before
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        asyncio.run(
            delete_topics(
                bootstrap, list(topics.values()), security=local_connection().kafka_security()
            )
        )
        asyncio.run(drop_schema(url, schema))
    figures |= {
        "body_bytes": round(sum(len(body_of(r)) for r in records) / len(records)),
        "api": api,
        "raw_produce": raw,
        # The warm-up's requests are in the CPU time too: per request, over both.
        "api_cpu_ms_per_request": round(
            api_cpu * 1000 / max(api["sent"] + int(args.rate * 3), 1), 3
        ),
        "p99_over_raw_ms": round(api["p99_ms"] - raw["p99_ms"], 3),
        "meets_p99": api["p99_ms"] <= args.max_p99_ms and api["errors"] == 0,
    }
    for name, value in figures.items():
        print(f"{name:24s} {value}")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
