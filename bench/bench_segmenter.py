"""Event-to-change latency and time-driven lateness of the whole pipeline, in one run.

    .venv/bin/python -m bench.bench_segmenter [--rate 5000] [--seconds 60] [--customers 20000]
        [--segmenters 1] [--profile out.folded] [--cpu-profile DIR]

Runs one ingest and `--segmenters` segmenter processes against the stack (own schema and
topics), then:
1. produces events of `--quiet` customers whose last interaction turns 7 days old during the
   run, so their engagement moves from engaged to casual by time alone;
2. produces live shopper events at `--rate` events/s for `--seconds`;
3. reads the segment history: for changes caused by an event, latency = commit of the
   change - the event's time (events carry their send time, so that is their arrival in
   Kafka to within the producer's linger); for time-driven changes, lateness = evaluation
   time - the moment the change became due.

Then, with the services stopped, the limits on this run's own records and schema: the raw
aiokafka consume-and-decode rate of the live topics and the raw PostgreSQL upsert rate (as
in `bench_ingest`).

The commit time is when the change's history row became visible: the history's highest id
is sampled every 50 ms during the run (ids follow commit order), so it is late by 25 ms on
average. `event_to_evaluation` is the older figure, which stopped at the start of the
evaluating batch and so left out the batch's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import statistics
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from bench.bench_ingest import (
    cpu_seconds,
    forget_cache,
    raw_consume_rate,
    raw_upsert_rate,
    stack_connection,
    stack_engine,
    stack_env,
)
from shared.db.migrate import upgrade
from shared.events import Login, encode_event
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.kafka import TopicSpec, delete_topics, dlq_topic, ensure_topics, make_producer
from shared.security import PLAINTEXT, KafkaSecurity
from shared.workload import Workload

ROOT = Path(__file__).resolve().parent.parent


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    # quantiles() needs two points; one point is every percentile of itself.
    qs = statistics.quantiles(
        values * 2 if len(values) == 1 else values, n=1000, method="inclusive"
    )
    return {
        "n": len(values),
        "p50_ms": round(qs[499] * 1000, 1),
        "p95_ms": round(qs[949] * 1000, 1),
        "p99_ms": round(qs[989] * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def produce_live(
    bootstrap: str,
    orders: str,
    interactions: str,
    rate: float,
    seconds: float,
    customers: int,
    until: asyncio.Event | None = None,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Live events at `rate` for `seconds`, or until `until` is set; returns how many."""
    now = datetime.now(UTC)
    work = Workload(seed=11, customers=customers, start=now - timedelta(days=1), end=now)
    producer = make_producer(bootstrap, security=security, client_id="bench-live")
    await producer.start()
    sent = 0
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = []
        while loop.time() - started < seconds and not (until and until.is_set()):
            due = int((loop.time() - started) * rate)
            while sent < due:
                ev = work.event_at(datetime.now(UTC))
                topic = orders if isinstance(ev, ORDER_EVENT_CLASSES) else interactions
                pending.append(
                    await producer.send(topic, encode_event(ev), key=ev.customer_id.encode())
                )
                sent += 1
            if len(pending) > 5000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def produce_quiet(
    bootstrap: str,
    topic: str,
    n: int,
    first_due: datetime,
    spread: float,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    producer = make_producer(bootstrap, security=security, client_id="bench-quiet")
    await producer.start()
    try:
        futures = []
        for i in range(n):
            due = first_due + timedelta(seconds=spread * i / n)
            ev = Login(
                event_id=f"q-{i}", customer_id=f"q{i:06d}", occurred_at=due - timedelta(days=7)
            )
            futures.append(
                await producer.send(topic, encode_event(ev), key=ev.customer_id.encode())
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def sample_backlogs(engine: Any, out: list[tuple[int, float]]) -> None:
    """(customers due, age of the oldest) once a second, until cancelled."""
    while True:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), COALESCE(extract(epoch FROM now() - min(due_at)), 0)"
                        " FROM segmentation_queue WHERE due_at <= now()"
                    )
                )
            ).one()
        out.append((int(row[0]), float(row[1])))
        await asyncio.sleep(1)


async def sample_commits(engine: Any, out: list[tuple[int, float]]) -> None:
    """(highest history id, wall time it was seen) every 50 ms, until cancelled."""
    async with engine.connect() as conn:
        while True:
            top = (
                await conn.execute(text("SELECT COALESCE(max(id), 0) FROM segment_history"))
            ).scalar_one()
            await conn.commit()  # a fresh snapshot each time
            if not out or top > out[-1][0]:
                out.append((int(top), datetime.now(UTC).timestamp()))
            await asyncio.sleep(0.05)


def commit_latencies(rows: list[Any], commits: list[tuple[int, float]]) -> list[float]:
    """Seconds from each change's event to the first sample that saw its history row."""
    ids = [i for i, _ in commits]
    out = []
    for row in rows:
        at = bisect.bisect_left(ids, row.id)
        if at < len(commits):
            out.append(commits[at][1] - row.event_at.timestamp())
    return out


def start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes]:
    """py-spy (when installed beside this Python) on one segmenter, in raw folded form."""
    spy = Path(sys.executable).parent / "py-spy"
    command = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command.extend(["--rate", "200", "--format", "raw", "-o", str(path)])
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class PrivateStack:
    """A run's own schema, topics and cache prefix on the shared stack."""

    tag: str
    schema: str
    orders: str
    interactions: str
    changes: str

    @classmethod
    def new(cls) -> PrivateStack:
        tag = uuid.uuid4().hex[:8]
        orders, interactions, changes = (
            f"bench-{n}-{tag}" for n in ("orders", "interactions", "changes")
        )
        return cls(tag, f"bench_{tag}", orders, interactions, changes)

    @property
    def topics(self) -> list[str]:
        return [self.orders, self.interactions, self.changes]

    @property
    def cache_prefix(self) -> str:
        return f"bench:{self.tag}:"

    def service_env(self, env: dict[str, str]) -> dict[str, str]:
        return env | {
            "STREAMSEG_DATABASE_SCHEMA": self.schema,
            "STREAMSEG_REDIS_KEY_PREFIX": self.cache_prefix,
            "STREAMSEG_INGEST_ORDERS_TOPIC": self.orders,
            "STREAMSEG_INGEST_INTERACTIONS_TOPIC": self.interactions,
            "STREAMSEG_INGEST_GROUP_ID": f"bench-{self.tag}",
            "STREAMSEG_INGEST_OPS_PORT": "0",
            "STREAMSEG_SEGMENTER_CHANGES_TOPIC": self.changes,
            "STREAMSEG_SEGMENTER_OPS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }

    async def create(self, env: dict[str, str]) -> Any:
        """The topics and the migrated schema; returns an engine on the schema."""
        conn = stack_connection(env)
        await ensure_topics(
            conn.kafka_bootstrap,
            [TopicSpec(t, 4) for t in self.topics],
            security=conn.kafka_security(),
        )
        engine = stack_engine(env, self.schema)
        await upgrade(engine, self.schema)
        return engine

    async def drop(self, env: dict[str, str], engine: Any) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
        await engine.dispose()
        conn = stack_connection(env)
        await delete_topics(
            conn.kafka_bootstrap,
            [*self.topics, dlq_topic(self.orders), dlq_topic(self.interactions)],
            security=conn.kafka_security(),
        )
        await forget_cache(conn.redis_url, self.cache_prefix, tls=conn.redis_tls())


def start_services(
    service_env: dict[str, str], names: list[str], cpu_profile: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """`python -m services.<name>` for each name, logging to .stack/bench-<name><i>.log;
    with `cpu_profile`, each under bench/cpu_profile.py, writing <cpu_profile>/<name><i>.prof."""
    logs = ROOT / ".stack"
    logs.mkdir(exist_ok=True)

    def command(name: str, i: int) -> list[str]:
        if cpu_profile is None:
            return [sys.executable, "-m", f"services.{name}"]
        out = str(cpu_profile / f"{name}{i}.prof")
        return [sys.executable, "-m", "bench.cpu_profile", out, f"services.{name}"]

    return [
        subprocess.Popen(
            command(name, i),
            cwd=ROOT,
            env=service_env,
            stdout=(logs / f"bench-{name}{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i, name in enumerate(names)
    ]


def stop_services(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate and wait for each; safe to call again."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--quiet", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=10, help="seconds left out at the start")
    parser.add_argument("--segmenters", type=int, default=1, help="segmenter processes")
    parser.add_argument("--profile", type=Path, help="py-spy folded stacks of segmenter 1")
    parser.add_argument(
        "--cpu-profile", type=Path, help="a directory: cProfile (process CPU) of each service"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = stack_env()
    connection = stack_connection(env)
    bootstrap, security = connection.kafka_bootstrap, connection.kafka_security()
    stack = PrivateStack.new()
    orders, interactions = stack.orders, stack.interactions
    engine = await stack.create(env)
    names = ["ingest", *(["segmenter"] * args.segmenters)]
    if args.cpu_profile:
        args.cpu_profile.mkdir(parents=True, exist_ok=True)
    procs = start_services(stack.service_env(env), names, args.cpu_profile)
    try:
        await asyncio.sleep(3)
        first_due = datetime.now(UTC) + timedelta(seconds=args.warmup + 5)
        await produce_quiet(
            bootstrap, interactions, args.quiet, first_due, args.seconds / 2, security=security
        )
        started = datetime.now(UTC)
        samples: list[tuple[int, float]] = []
        commits: list[tuple[int, float]] = []
        sampling = asyncio.create_task(sample_backlogs(engine, samples))
        watching = asyncio.create_task(sample_commits(engine, commits))
        if args.profile:
            profiler = start_profiler(procs[1].pid, args.seconds, args.profile)
        sent = await produce_live(
            bootstrap,
            orders,
            interactions,
            args.rate,
            args.seconds,
            args.customers,
            security=security,
        )
        ended = datetime.now(UTC)
        sampling.cancel()
        for _ in range(300):  # let the backlog drain, at most a minute
            async with engine.connect() as conn:
                due = (
                    await conn.execute(
                        text("SELECT count(*) FROM segmentation_queue WHERE due_at <= now()")
                    )
                ).scalar_one()
            if due == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)
        watching.cancel()
        if args.profile:
            profiler.wait(args.seconds + 30)
        async with engine.connect() as conn:
            event_rows = list(
                await conn.execute(
                    text(
                        """
                SELECT id, caused_by_event_at AS event_at,
                       extract(epoch FROM evaluated_at - caused_by_event_at) AS s
                FROM segment_history
                WHERE cause = 'event' AND customer_id LIKE 'c%' AND evaluated_at > :from
                """
                    ),
                    {"from": started + timedelta(seconds=args.warmup)},
                )
            )
            evaluations = (
                await conn.execute(
                    text("SELECT COALESCE(sum(version), 0) FROM customer_evaluations")
                )
            ).scalar_one()
            time_rows = (
                (
                    await conn.execute(
                        text(
                            """
                SELECT extract(epoch FROM h.evaluated_at
                               - (a.last_interaction_at + interval '7 days')) AS s
                FROM segment_history h JOIN customer_aggregates a USING (customer_id)
                WHERE h.cause = 'time' AND h.customer_id LIKE 'q%' AND h.dimension = 'engagement'
                """
                        )
                    )
                )
                .scalars()
                .all()
            )
        cpu = [cpu_seconds(p.pid) for p in procs]
        stop_services(procs)
        # The limits, on this run's own records and schema once the services have stopped.
        limits = {
            "raw_consume_decode_per_s": round(
                await raw_consume_rate(bootstrap, [orders, interactions], sent, security=security)
            ),
            "raw_pg_upsert_rows_per_s": round(
                await raw_upsert_rate(
                    connection.database_url,
                    stack.schema,
                    200_000,
                    50_000,
                    tls=connection.postgres_tls(),
                )
            ),
        }
    finally:
        stop_services(procs)
        await stack.drop(env, engine)
    figures: dict[str, Any] = {
        "offered_rate_per_s": args.rate,
        "achieved_rate_per_s": round(sent / (ended - started).total_seconds()),
        "seconds": args.seconds,
        "segmenters": args.segmenters,
        "event_to_change": percentiles(commit_latencies(event_rows, commits)),
        "event_to_evaluation": percentiles([float(r.s) for r in event_rows]),
        "time_driven_lateness": percentiles([float(v) for v in time_rows]),
        "time_driven_expected": args.quiet,
        # Evaluations of the whole run (the quiet customers' and the warm-up's too).
        "evaluations": int(evaluations),
        # CPU seconds of each process over the whole run, less noisy than rates on a shared
        # machine: segmenter CPU per evaluation is the figure to compare between versions.
        "cpu_s": {f"{n}{i}": round(c, 1) for i, (n, c) in enumerate(zip(names, cpu, strict=True))},
        "segmenter_cpu_ms_per_evaluation": round(1000 * sum(cpu[1:]) / max(1, int(evaluations)), 3),
        # Where a backlog built up, sampled each second during the live load.
        "max_segmenter_due_customers": max((d for d, _ in samples), default=0),
        "max_segmenter_oldest_due_s": round(max((a for _, a in samples), default=0.0), 2),
        **limits,
    }
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())
