"""Latency of GET /v1/customers/{id}/segments for cached customers, under open-loop load.

    .venv/bin/python -m bench.bench_api [--customers 20000] [--duration 20] [--rate 1000]
                                        [--load-tool python|vegeta] [--documents-behind]

1. seeds N customers into PostgreSQL and the Redis cache (own schema and key prefix),
   evaluated under the default definitions, which are in force (with --documents-behind,
   a newer version with the same rules is, so that each read filters its document);
2. runs the API as `python -m services.api` (uvicorn, no access log) in a subprocess;
3. from a second process, sends requests for random cached customers at a fixed arrival
   rate (open loop: a request is due at its time whether or not earlier ones have answered,
   and its latency counts from that time, so a stalled server cannot hide its queue);
4. measures p50/p95/p99 at --rate, then steps the rate up from --start-rate to find the
   highest one the API sustains (no error, >= 97% answered, p99 under --max-p99-ms).

Two load generators, for every phase (warm-up, measured, steps), timed the same way:
- `python` (the default): an asyncio process in this file that speaks HTTP/1.1 over
  keep-alive sockets itself, since an HTTP client library would add its own per-request cost;
- `vegeta` (bench/vegeta.py): the Go tool, installed into .bench-tools/ on first use. It
  paces from a goroutine and can use both cores, so its timing does not hang on one Python
  event loop; latency still runs from the due time, computed from its per-request results.
Python stays the default: in alternating quiet runs the two gave the same figures within the
spread between runs of either (docs/performance.md, 11-27), and vegeta took about 0.3 ms of
CPU per request against 0.2 ms, on cores the API shares, and needs Go once. vegeta is the
check that a figure is not the generator's own.
Each phase also reports the generator's own CPU per request (start-up included), its late
sends (more than 5 ms after due) and p99 from send (without the generator's lateness).
Both processes share this machine's cores, so the maximum rate is a floor for what a
dedicated server would do.
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx
import orjson
from sqlalchemy import text

from bench import vegeta
from bench.bench_ingest import forget_cache, stack_connection, stack_env
from bench.vegeta import LATE_SECONDS
from services.api.auth import repository as keys_repository
from services.api.auth.keys import hash_key, new_key
from shared.db.engine import create_engine, driver_connection
from shared.db.migrate import upgrade
from shared.definitions import repository as definitions_store
from shared.definitions.activation import activate_content
from shared.redis import make_redis
from shared.segment_cache import CachedAggregates, CachedCustomer, CachedSegment, SegmentCache
from shared.segmentation import load_definitions
from shared.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEFINITIONS = ROOT / "shared/segmentation/definitions/default.yaml"
IDLE_SECONDS = 4.0  # a kept-alive connection is reused while idle for less than this
SEGMENTS = {"lifecycle": "active", "value_tier": "high", "rfm": "loyal", "engagement": "engaged"}


def document(customer_id: str, now: datetime) -> CachedCustomer:
    return CachedCustomer(
        customer_id=customer_id,
        version=1,
        definition_version=1,
        evaluated_at=now,
        next_change_at=now + timedelta(days=3),
        segments={
            dim: CachedSegment(segment=seg, since=now - timedelta(days=9), reason=f"{dim} rule")
            for dim, seg in SEGMENTS.items()
        },
        scores={"r_score": 4, "f_score": 3, "m_score": 4},
        aggregates=CachedAggregates(
            order_count=4,
            net_spend=Decimal("412.3000"),
            spend_365d=Decimal("412.3000"),
            orders_365d=4,
            first_order_at=now - timedelta(days=200),
            last_order_at=now - timedelta(days=9),
            interaction_count=57,
            interactions_30d=11,
            last_interaction_at=now - timedelta(hours=2),
            open_cart_at=None,
        ),
    )


async def seed(
    stack: ConnectionSettings, schema: str, prefix: str, ids: list[str], documents_behind: bool
) -> str:
    """Rows and cache documents for `ids`, evaluated under the default definitions (version
    1); returns an API key that may read them. With `documents_behind`, a version 2 with the
    same rules is in force, so that every read checks its document's dimensions."""
    now = datetime.now(UTC)
    engine = create_engine(stack.database_url, schema, tls=stack.postgres_tls())
    try:
        await upgrade(engine, schema)
        async with engine.begin() as sa_conn:
            conn = await driver_connection(sa_conn)
            text_v1 = DEFAULT_DEFINITIONS.read_text()
            await definitions_store.seed(
                conn, text_v1, load_definitions(text_v1).content_hash, "bench"
            )
            if documents_behind:
                text_v2 = text_v1.replace("description: ", "description: Version 2. ", 1)
                await activate_content(conn, text_v2, replaces=1, actor="bench")
            await conn.execute(
                "INSERT INTO customer_evaluations (customer_id, version, definition_version,"
                " evaluated_at) SELECT unnest($1::text[]), 1, 1, $2",
                ids,
                now,
            )
            for dim, seg in SEGMENTS.items():
                await conn.execute(
                    "INSERT INTO customer_segments SELECT unnest($1::text[]), $2, $3, $4,"
                    " 'seeded', 1, $4",
                    ids,
                    dim,
                    seg,
                    now,
                )
            key_id, key = new_key()
            await keys_repository.insert_key(
                conn, key_id, "bench", hash_key(key), ["segments:read"]
            )
    finally:
        await engine.dispose()
    redis = make_redis(stack.redis_url, tls=stack.redis_tls(), timeout_seconds=5)
    try:
        cache = SegmentCache(redis, prefix)
        for start in range(0, len(ids), 1000):
            await cache.put_many([document(cid, now) for cid in ids[start : start + 1000]])
    finally:
        await redis.aclose()
    return key


async def drop(stack: ConnectionSettings, schema: str, prefix: str) -> None:
    engine = create_engine(stack.database_url, schema, tls=stack.postgres_tls())
    try:
        async with engine.begin() as db:
            await db.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()
    await forget_cache(stack.redis_url, prefix, tls=stack.redis_tls())


# ---------------------------------------------------------------- the load generator process


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def open_loop(
    host: str, port: int, key: str, ids: list[str], rate: float, duration: float
) -> dict[str, float]:
    """Send GETs at `rate` per second for `duration` seconds; latency from the due time."""
    requests = [
        f"GET /v1/customers/{cid}/segments HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
        for cid in ids
    ]
    idle: list[Connection] = []
    latencies: list[float] = []
    from_send: list[float] = []
    errors = 0
    ok = 0
    late = 0
    tasks: set[asyncio.Task[None]] = set()

    def reusable() -> Connection | None:
        # uvicorn closes a connection idle for 5 s (its keep-alive timeout), and a request
        # sent on it as it closes fails: drop older ones, as HTTP clients do with their own
        # idle timeout. The idle list is a stack, so the oldest are at the bottom.
        while idle:
            conn = idle.pop()
            if time.perf_counter() - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.writer.close()
        return None

    async def one(due: float) -> None:
        nonlocal errors, ok
        began = time.perf_counter()
        conn = reusable() or Connection(*await asyncio.open_connection(host, port))
        try:
            status = await conn.get(random.choice(requests))
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            conn.writer.close()
            return
        answered = time.perf_counter()
        latencies.append(answered - due)
        from_send.append(answered - began)
        if status == 200:
            ok += 1
        else:
            errors += 1
        conn.idle_since = answered
        idle.append(conn)

    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.05
    total = int(rate * duration)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -LATE_SECONDS:
            late += 1  # the generator itself fell behind: this run's figures are suspect
        task = loop.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    elapsed = time.perf_counter() - start
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for conn in idle:
        conn.writer.close()
    return summary(rate, total, latencies, from_send, errors, ok, late, elapsed)


def summary(
    rate: float,
    sent: int,
    latencies: list[float],
    from_send: list[float],
    errors: int,
    ok: int,
    late_sends: int,
    elapsed: float,
) -> dict[str, float]:
    """One phase's figures, the same for either load tool.

    `latencies` run from each request's due time, `from_send` from when the generator began
    it (seconds): only the first counts the generator's own lateness in starting requests.
    """
    latencies, from_send = sorted(latencies), sorted(from_send)

    def pct(q: float, values: list[float]) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0

    return {
        "rate": float(rate),
        "sent": sent,
        "answered": len(latencies),
        "errors": errors,
        "success_ratio": round(ok / max(sent, 1), 4),
        "late_sends": late_sends,
        "achieved_per_s": round(len(latencies) / max(elapsed, 1e-9), 1),
        "p50_ms": round(pct(0.50, latencies), 3),
        "p95_ms": round(pct(0.95, latencies), 3),
        "p99_ms": round(pct(0.99, latencies), 3),
        "max_ms": round(latencies[-1] * 1000 if latencies else 0, 3),
        "p99_from_send_ms": round(pct(0.99, from_send), 3),
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_python_load(
    url: str, key: str, ids_file: Path, rate: float, duration: float
) -> dict[str, float]:
    """Run the Python generator as a separate process and read its JSON result."""
    numbers = [str(rate), str(duration)]
    cpu_before = children_cpu_seconds()
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_api", "load", url, key, str(ids_file), *numbers],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    result: dict[str, float] = orjson.loads(out)
    cpu = children_cpu_seconds() - cpu_before
    result["load_cpu_ms_per_request"] = round(cpu * 1000 / max(result["sent"], 1), 3)
    return result


def run_vegeta_load(
    binary: Path, url: str, key: str, ids: list[str], workdir: Path, rate: float, duration: float
) -> dict[str, float]:
    targets = workdir / "targets.http"
    vegeta.write_targets(targets, url, key, ids, int(rate * duration) + 10)
    run = vegeta.attack(binary, targets, rate, duration)
    ok = run.sent - run.errors  # every request vegeta sends has a result
    result = summary(
        rate, run.sent, run.latencies, run.from_send, run.errors, ok, run.late_sends, run.elapsed
    )
    result["load_cpu_ms_per_request"] = round(run.cpu_seconds * 1000 / max(run.sent, 1), 3)
    return result


def load_main(argv: list[str]) -> None:
    url, key, ids_file, rate, duration = argv
    host, _, port = url.removeprefix("http://").partition(":")
    ids = Path(ids_file).read_text().split()
    result = asyncio.run(open_loop(host, int(port), key, ids, float(rate), float(duration)))
    sys.stdout.buffer.write(orjson.dumps(result))


# ---------------------------------------------------------------- the orchestrating process


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API process exited at start")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the API did not start within 30 s")


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid` and its children alive now (API workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone in the meantime
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def is_sustained(result: dict[str, float], max_p99_ms: float) -> bool:
    return (
        result["answered"] >= 0.97 * result["sent"]
        and result["errors"] == 0
        and result["p99_ms"] <= max_p99_ms
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=20, help="seconds at --rate")
    parser.add_argument("--start-rate", type=float, default=200, help="first step, per second")
    parser.add_argument("--step", type=float, default=200, help="increase per step")
    parser.add_argument("--max-rate", type=float, default=5000, help="last step at most")
    parser.add_argument("--step-duration", type=float, default=8, help="seconds per step")
    parser.add_argument("--max-p99-ms", type=float, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--load-tool", choices=["python", "vegeta"], default="python", help="see the docstring"
    )
    parser.add_argument(
        "--documents-behind",
        action="store_true",
        help="documents evaluated under an older version than the one in force",
    )
    args = parser.parse_args()
    binary = vegeta.installed() if args.load_tool == "vegeta" else None
    env = stack_env()
    tag = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_api_{tag}", f"bench-api-{tag}:"
    stack = stack_connection(env)
    ids = [f"bench-{i:07d}" for i in range(args.customers)]
    key = asyncio.run(seed(stack, schema, prefix, ids, args.documents_behind))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    api_env = env | {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_REDIS_KEY_PREFIX": prefix,
        "STREAMSEG_API_PORT": str(port),
        "STREAMSEG_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    log = ROOT / ".stack" / "bench-api.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out, tempfile.TemporaryDirectory() as tmp:
        ids_path = Path(tmp) / "ids"
        ids_path.write_text("\n".join(ids))

        def run_load(rate: float, duration: float) -> dict[str, float]:
            if binary is None:
                return run_python_load(api_url, key, ids_path, rate, duration)
            return run_vegeta_load(binary, api_url, key, ids, Path(tmp), rate, duration)

        proc = subprocess.Popen(
            [sys.executable, "-m", "services.api"], cwd=ROOT, env=api_env, stdout=out, stderr=out
        )
        try:
            wait_ready(api_url, proc)
            run_load(300, 5)  # warm-up: pools, caches, code paths
            load_before = os.getloadavg()[0]
            # The measured rate first, then rising rates from a light load: the last step is
            # an overload (3,400 to 4,800/s here), and an overloaded run leaves a backlog (of
            # audit entries, pooled connections) that would weigh on any run after it.
            cpu_before = cpu_seconds(proc.pid)
            fixed = run_load(args.rate, args.duration)
            api_cpu = cpu_seconds(proc.pid) - cpu_before
            steps = []
            rate = args.start_rate
            while True:
                result = run_load(rate, args.step_duration)
                steps.append(result)
                print(f"step {orjson.dumps(result).decode()}", file=sys.stderr)
                if not is_sustained(result, args.max_p99_ms) or rate >= args.max_rate:
                    break
                rate += args.step
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            asyncio.run(drop(stack, schema, prefix))
    sustained = [s["rate"] for s in steps if is_sustained(s, args.max_p99_ms)]
    figures = {
        "load_tool": args.load_tool,
        "documents_behind": args.documents_behind,
        "customers": args.customers,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "answered": fixed["answered"],
        "errors": fixed["errors"],
        "success_ratio": fixed["success_ratio"],
        "late_sends": fixed["late_sends"],
        "p50_ms": fixed["p50_ms"],
        "p95_ms": fixed["p95_ms"],
        "p99_ms": fixed["p99_ms"],
        "max_ms": fixed["max_ms"],
        "p99_from_send_ms": fixed["p99_from_send_ms"],
        "max_sustained_per_s": max(sustained) if sustained else 0,
        "api_cpu_ms_per_request": round(api_cpu * 1000 / max(fixed["answered"], 1), 3),
        "load_cpu_ms_per_request": fixed["load_cpu_ms_per_request"],
        "machine_load_1m_before": round(load_before, 2),
        "sustained_means": f"errors 0, >= 97% answered, p99 <= {args.max_p99_ms} ms",
        "first_unsustained": steps[-1],
    }
    for name, value in figures.items():
        print(f"{name:24s} {value}")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(sys.argv[2:])
    else:
        main()
