"""Member exports: the API process's resident memory while it streams 1,000,000 members,
and rows/s, beside PostgreSQL's raw `COPY ... TO STDOUT` of the same rows in the same run.

    .venv/bin/python -m bench.bench_export [--members 1000000] [--small 100000]
                                           [--max-growth-mib 64]

1. a schema of its own with every migration and the default definitions in force; the
   members written with COPY: `--members` in lifecycle `active`, `--small` in `churned`
   (reasons of 20 to 60 characters, some with commas and quotes, as CSV must quote them);
2. raw baseline: `COPY (SELECT customer_id, since, reason ... ORDER BY customer_id) TO
   STDOUT (FORMAT csv)` of each segment through asyncpg into a sink that counts bytes: what
   PostgreSQL alone takes to produce the same rows in order;
3. runs the API as `python -m services.api` and downloads each export (the small segment
   first, then the large one, as CSV and as NDJSON), reading the stream as it comes and
   counting rows; samples the API process's VmRSS every 20 ms meanwhile;
4. prints, per export: rows, seconds, rows/s, and RSS at its start, its peak and its end;
   and whether the peak stayed within `--max-growth-mib` of the RSS before the first
   export. The peak for 100,000 members beside the one for 1,000,000 shows that memory
   does not grow with the segment's size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from bench.bench_api import free_port, wait_ready
from bench.bench_ingest import drop_schema, local_connection, stack_env
from services.api.auth import repository as keys_repository
from services.api.auth.keys import hash_key, new_key
from shared.db.engine import create_engine, driver_connection
from shared.db.migrate import upgrade
from shared.definitions import repository as definitions_store
from shared.segmentation import load_definitions

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEFINITIONS = ROOT / "shared/segmentation/definitions/default.yaml"
REASONS = [
    "days_since_first_order >= 30 and days_since_last_order < 90",
    'lifecycle rule "active", evaluated on event',
    "spend_365d >= 428.28, orders_365d = 7",
    "days_since_last_order >= 180",
]


async def seed(url: str, schema: str, segments: dict[str, int]) -> str:
    engine = create_engine(url, schema, tls=local_connection().postgres_tls())
    try:
        await upgrade(engine, schema)
        async with engine.begin() as sa_conn:
            conn = await driver_connection(sa_conn)
            content = DEFAULT_DEFINITIONS.read_text()
            await definitions_store.seed(
                conn, content, load_definitions(content).content_hash, "bench"
            )
            rng = random.Random(3)
            start = datetime(2025, 1, 1, tzinfo=UTC)
            offset = 0
            for segment, size in segments.items():
                ids = range(offset, offset + size)
                offset += size
                await conn.copy_records_to_table(
                    "customer_segments",
                    records=(
                        (
                            f"c{i:08d}",
                            "lifecycle",
                            segment,
                            start + timedelta(seconds=rng.randrange(30_000_000)),
                            rng.choice(REASONS),
                            1,
                            start,
                        )
                        for i in ids
                    ),
                )
            await conn.execute("ANALYZE customer_segments")
            key_id, key = new_key()
            await keys_repository.insert_key(
                conn, key_id, "bench", hash_key(key), ["segments:read"]
            )
    finally:
        await engine.dispose()
    return key


async def raw_copy(url: str, schema: str, segment: str) -> dict[str, float]:
    conn = await asyncpg.connect(
        url.replace("+asyncpg", ""),
        server_settings={"search_path": schema},
        ssl=local_connection().postgres_tls().connect_ssl(),
    )
    size = 0

    async def sink(data: bytes) -> None:
        nonlocal size
        size += len(data)

    try:
        started = time.perf_counter()
        status = await conn.copy_from_query(
            "SELECT customer_id, since, reason FROM customer_segments"
            " WHERE dimension = 'lifecycle' AND segment = $1 ORDER BY customer_id",
            segment,
            output=sink,
            format="csv",
        )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    rows = int(status.split()[-1])
    return {
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """VmRSS of `pid` every `interval` s on a thread of its own, while a block runs."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def export(api_url: str, key: str, pid: int, segment: str, kind: str) -> dict[str, Any]:
    url = f"{api_url}/v1/segments/lifecycle/{segment}/members/export"
    start_kib = rss_kib(pid)
    size = newlines = 0
    with RssSampler(pid) as rss, httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {key}"}
        with client.stream("GET", url, headers=headers, params={"format": kind}) as response:
            response.raise_for_status()
            for chunk in response.iter_raw(256 * 1024):
                size += len(chunk)
                newlines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
    rows = newlines - (1 if kind == "csv" else 0)  # the reasons hold no line ends
    return {
        "segment": segment,
        "format": kind,
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "rss_start_mib": round(start_kib / 1024, 1),
        "rss_peak_mib": round(rss.peak / 1024, 1),
        "rss_end_mib": round(rss_kib(pid) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--max-growth-mib", type=float, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env = stack_env()
    url = env["STREAMSEG_DATABASE_URL"]
    schema = f"bench_export_{uuid.uuid4().hex[:8]}"
    segments = {"churned": args.small, "active": args.members}
    figures: dict[str, Any] = {"machine_load_1m_before": round(os.getloadavg()[0], 2)}
    try:
        started = time.perf_counter()
        key = asyncio.run(seed(url, schema, segments))
        figures["seed_seconds"] = round(time.perf_counter() - started, 1)
        figures["raw_copy"] = [asyncio.run(raw_copy(url, schema, s)) for s in segments]
        port = free_port()
        api_env = env | {
            "STREAMSEG_DATABASE_SCHEMA": schema,
            "STREAMSEG_API_PORT": str(port),
            "STREAMSEG_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        log = ROOT / ".stack" / "bench-export.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api"],
                cwd=ROOT,
                env=api_env,
                stdout=out,
                stderr=out,
            )
            try:
                api_url = f"http://127.0.0.1:{port}"
                wait_ready(api_url, proc)
                before = rss_kib(proc.pid)
                figures["rss_before_mib"] = round(before / 1024, 1)
                runs = [
                    export(api_url, key, proc.pid, segment, kind)
                    for segment in segments
                    for kind in ("csv", "ndjson")
                ]
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        asyncio.run(drop_schema(url, schema))
    peak = max(r["rss_peak_mib"] for r in runs)
    figures |= {
        "exports": runs,
        "rss_peak_mib": peak,
        "rss_growth_mib": round(peak - figures["rss_before_mib"], 1),
        "within_bound": peak - figures["rss_before_mib"] <= args.max_growth_mib
        and all(r["rows"] == segments[r["segment"]] for r in runs),
        "bound_mib": args.max_growth_mib,
    }
    for name, value in figures.items():
        if isinstance(value, list):
            for item in value:
                print(f"{name:24s} {orjson.dumps(item).decode()}")
        else:
            print(f"{name:24s} {value}")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
