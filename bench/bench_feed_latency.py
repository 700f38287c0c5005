"""Commit-to-feed latency: from a segment change to its line in the dashboard's live feed.

    .venv/bin/python -m bench.bench_feed_latency [--changes 40] [--customers 2000]
        [--interval 0.5] [--json out.json]

Runs a segmenter and the API as processes on a schema of their own (as bench_segmenter
does), seeds `--customers` customers and waits until they are evaluated, then opens the
dashboard in Debian's Chromium (Playwright, as tests/integration/test_dashboard.py does) on
its live feed, and beside it a plain SSE reader (httpx) of the same stream. `--changes`
times, every `--interval` seconds, it commits a new customer's facts as ingest does (the
segmenter then evaluates it and commits four changes), and records when each side first
shows the customer: the page by a MutationObserver (Date.now()), the SSE reader by its
receive time. Latencies are measured from:
- the segmenter's `evaluated_at` of the customer's changes (stamped just before its
  transaction commits): commit to feed, the goal being 2 s;
- the facts' commit (ingest's side): event to feed, the whole path.
The baseline, measured in the same run: a raw PostgreSQL INSERT and commit, and the plain SSE
reader (what the stream alone costs, without the browser).

Needs the stack (`bash deploy/stack.sh up`) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.bench_ingest import stack_env
from bench.bench_segmenter import PrivateStack, stop_services
from services.api.auth import repository as auth_repository
from services.api.auth.keys import hash_key, new_key
from shared.db.engine import pg_connection
from shared.segmentation.facts import Interaction
from tests.conftest import free_port
from tests.integration.test_segmenter import random_histories
from tests.support.browser import browser, watched_page
from tests.support.segmenter import History, seed

ROOT = Path(__file__).resolve().parent.parent

_OBSERVER = """() => {
  window.__seen = {};
  new MutationObserver((records) => {
    const now = Date.now();
    for (const r of records) for (const n of r.addedNodes) {
      const id = n.dataset && n.dataset.customer;
      if (id && !(id in window.__seen)) window.__seen[id] = now;
    }
  }).observe(document.getElementById('live-feed'), {childList: true});
}"""


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


async def sse_reader(url: str, key: str, seen: dict[str, float], ready: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client,
        client.stream("GET", f"{url}/v1/changes/stream", headers=headers) as r,
    ):
        ready.set()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                customer = orjson.loads(line[5:])["data"]["customer_id"]
                seen.setdefault(customer, time.time())


async def raw_insert_ms(engine: Any, n: int) -> list[float]:
    out = []
    async with pg_connection(engine) as conn:
        await conn.execute("CREATE TEMP TABLE bench_raw (id bigserial, at timestamptz)")
        for _ in range(n):
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_raw (at) VALUES (now())")
            out.append((time.perf_counter() - started) * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    env = stack_env()
    stack = PrivateStack.new()
    engine = await stack.create(env)
    service_env = stack.service_env(env) | {"STREAMSEG_LOG_JSON": "true"}
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        now = datetime.now(UTC)
        await seed(engine, random_histories(args.customers, 5, now), now)
        logs = ROOT / ".stack"
        logs.mkdir(exist_ok=True)
        for name, extra in (("segmenter", {}), ("api", {"STREAMSEG_API_PORT": str(port)})):
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
                    [sys.executable, "-m", f"services.{name}"],
                    cwd=ROOT,
                    env=service_env | extra,
                    stdout=(logs / f"bench-feed-{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        for _ in range(1200):
            async with pg_connection(engine) as conn:
                left = await conn.fetchval(
                    "SELECT count(*) FROM segmentation_queue WHERE due_at <= now()"
                )
                evaluated = await conn.fetchval("SELECT count(*) FROM customer_evaluations")
            if left == 0 and evaluated == args.customers:
                break
            await asyncio.sleep(0.1)
        key_id, key = new_key()
        async with pg_connection(engine) as conn, conn.transaction():
            await auth_repository.insert_key(
                conn, key_id, "bench", hash_key(key), ["segments:read"]
            )
        baseline_ms = await raw_insert_ms(engine, args.changes)

        sse_seen: dict[str, float] = {}
        sse_ready = asyncio.Event()
        reader = asyncio.create_task(sse_reader(url, key, sse_seen, sse_ready))
        committed: dict[str, float] = {}
        async with browser() as b:
            watched = await watched_page(b)
            page = watched.page
            await page.goto(f"{url}/dashboard/")
            await page.get_by_label("API key").fill(key)
            await page.keyboard.press("Enter")
            await page.get_by_role("tab", name="Live changes").click()
            await page.locator("#live-status").filter(has_text="Connected").wait_for()
            await page.evaluate(_OBSERVER)
            await sse_ready.wait()
            for i in range(args.changes):
                cid = f"feed-{i:04d}"
                at = datetime.now(UTC)
                await seed(
                    engine,
                    [
                        History(
                            cid,
                            orders=[(at - timedelta(hours=1), Decimal("30"))],
                            interactions=[Interaction(at - timedelta(minutes=1), "page_view")],
                        )
                    ],
                    at,
                )
                committed[cid] = time.time()
                await asyncio.sleep(args.interval)
            deadline = time.time() + 30
            while time.time() < deadline:
                page_seen: dict[str, float] = await page.evaluate("() => window.__seen")
                if all(c in page_seen and c in sse_seen for c in committed):
                    break
                await asyncio.sleep(0.2)
            page_seen = {
                k: v / 1000 for k, v in (await page.evaluate("() => window.__seen")).items()
            }
        reader.cancel()
        async with pg_connection(engine) as conn:
            rows = await conn.fetch(
                "SELECT customer_id, min(evaluated_at) AS at FROM segment_history"
                " WHERE customer_id LIKE 'feed-%' GROUP BY 1"
            )
        evaluated_at = {r["customer_id"]: r["at"].timestamp() for r in rows}
        missing = [c for c in committed if c not in page_seen or c not in evaluated_at]
        results = {
            "changes": args.changes,
            "missing_from_feed": len(missing),
            "commit_to_browser_s": summary(
                [page_seen[c] - evaluated_at[c] for c in committed if c not in missing]
            ),
            "commit_to_sse_reader_s": summary(
                [
                    sse_seen[c] - evaluated_at[c]
                    for c in committed
                    if c in sse_seen and c in evaluated_at
                ]
            ),
            "facts_commit_to_browser_s": summary(
                [page_seen[c] - committed[c] for c in committed if c not in missing]
            ),
            "baseline_raw_insert_commit_ms": summary(baseline_ms),
            "stream_poll_interval_ms": 250,
        }
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        if args.json:
            args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    finally:
        stop_services(procs)
        await stack.drop(env, engine)


if __name__ == "__main__":
    asyncio.run(main())
