"""Webhook delivery: deliveries per second to a local receiver, and commit-to-delivery latency.

    .venv/bin/python -m bench.bench_webhooks [--rate 1000] [--seconds 20] [--burst 20000]
        [--customers 5000] [--dispatchers 1]

Issue 13's goal: at least 1,000 deliveries/s to a local receiver, and at most 1 s from commit
to delivery at p99.

1. A receiver on loopback in a process of its own (tests/support/receiver.py: HTTP/1.1,
   keep-alive, answers 200), which writes each request's `webhook-id` and arrival time.
2. Raw baseline, in this run: POSTs of a change's bytes to the same receiver with the same
   client the dispatcher uses (services/webhooks/client.py, the SSRF guard included), as
   many in flight as the dispatcher's `STREAMSEG_WEBHOOKS_CONNECTIONS_PER_ORIGIN` (32).
3. A schema and topic of its own, one subscription without filters, and `--dispatchers`
   `python -m services.webhooks` processes.
4. Sustained: changes committed as the segmenter commits them (`lock_history`,
   `insert_changes`: history and outbox in one transaction), in batches every 50 ms at
   `--rate` changes/s for `--seconds`, spread over `--customers` customers, and published
   by the segmenter's outbox publisher (woken at each commit, as in the segmenter).
   Latency: the receiver's arrival time minus the time the commit returned, per change.
5. Burst: `--burst` changes committed and published while the dispatchers are stopped; the
   dispatchers start, and the drain rate is the deliveries over the time from the first
   arrival to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.bench_ingest import stack_connection, stack_env
from bench.bench_segmenter import ROOT, PrivateStack, percentiles
from services.segmenter import repository as seg
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.webhooks.client import Clients
from shared.db.engine import pg_connection
from shared.events import SegmentChange, encode_segment_change
from shared.webhooks.signing import new_secret


def receiver_main(port_file: str, out_file: str) -> None:
    """The receiver process: serve until SIGTERM, then write `id time` lines."""
    from tests.support.receiver import Receiver

    async def serve() -> None:
        arrivals: list[tuple[str, float]] = []

        def record(path: str, headers: dict[str, str], body: bytes) -> tuple[int, float]:
            arrivals.append((headers.get("webhook-id", "raw"), time.time()))
            return 200, 0.0

        receiver = Receiver(record, keep=False)
        await receiver.start()
        Path(port_file).write_text(str(receiver.port))  # noqa: ASYNC240 - once, at start
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        await receiver.stop()
        with open(out_file, "w") as out:  # noqa: ASYNC230 - once, at the end
            out.writelines(f"{i} {t}\n" for i, t in arrivals)

    asyncio.run(serve())


def _change(customer: str, sequence: int, at: datetime) -> SegmentChange:
    return SegmentChange(
        customer_id=customer,
        dimension="lifecycle",
        from_segment=f"s{sequence - 1}",
        to_segment=f"s{sequence}",
        reason="days_since_last_order=3 < 30",
        cause="event",
        definition_version=1,
        caused_by_event_time=at,
        evaluated_at=at,
        sequence=sequence,
    )


class Committer:
    """Commits changes as the segmenter does; remembers when each commit returned."""

    def __init__(self, engine: Any, customers: int) -> None:
        self.engine = engine
        self.customers = customers
        self.sequence: dict[str, int] = {}
        self.committed: dict[str, float] = {}
        self.next = 0

    async def commit(self, n: int) -> None:
        at = datetime.now(UTC)
        rows, payloads = [], []
        for _ in range(n):
            customer = f"c{self.next % self.customers:06d}"
            self.next += 1
            seq = self.sequence[customer] = self.sequence.get(customer, 0) + 1
            change = _change(customer, seq, at)
            change_id = str(uuid.uuid4())
            rows.append(
                seg.HistoryRow(
                    change_id,
                    customer,
                    change.dimension,
                    change.from_segment,
                    change.to_segment,
                    change.reason,
                    change.cause,
                    1,
                    at,
                    at,
                    seq,
                )
            )
            payloads.append(encode_segment_change(change, change_id=change_id))
        async with pg_connection(self.engine) as conn, conn.transaction():
            await seg.lock_history(conn)
            await seg.insert_changes(conn, rows, payloads)
        done = time.time()
        for r in rows:
            self.committed[r.change_id] = done


async def raw_baseline(url: str, body: bytes, n: int, concurrency: int) -> float:
    """POSTs/s of `body` to `url`: the dispatcher's clients, `concurrency` in flight, no
    database, no signing."""
    clients = Clients(allow_private=True, per_origin=concurrency, timeout_seconds=15)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < n:
            sent += 1
            async with clients.connection(url) as client:
                response = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
            response.raise_for_status()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up
        sent = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)
    finally:
        await clients.aclose()


async def wait_for(condition: Any, deadline: float) -> None:
    """Poll `condition` until it holds or the monotonic `deadline` passes."""
    while not await condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - a poll of another process
        await asyncio.sleep(0.1)


def read_arrivals(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        i, t = line.split(" ")
        out.setdefault(i, float(t))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--raw", type=int, default=20000)
    parser.add_argument("--cpu-profile", type=Path, default=None, help="a folder for .prof files")
    args = parser.parse_args()

    env = stack_env()
    stack = PrivateStack.new()
    engine = await stack.create(env)
    work = ROOT / ".stack" / f"bench-webhooks-{stack.tag}"
    work.mkdir(parents=True, exist_ok=True)
    port_file, arrivals_file = work / "port", work / "arrivals"
    receiver = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
        [
            sys.executable,
            "-m",
            "bench.bench_webhooks",
            "receiver",
            str(port_file),
            str(arrivals_file),
        ],
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT)},
    )
    dispatchers: list[subprocess.Popen[bytes]] = []
    service_env = stack.service_env(env) | {
        "STREAMSEG_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        "STREAMSEG_WEBHOOKS_GROUP_ID": f"bench-webhooks-{stack.tag}",
        "STREAMSEG_WEBHOOKS_OPS_PORT": "0",
    }

    def start_dispatchers() -> None:
        for i in range(args.dispatchers):
            log = (work / f"webhooks{i}.log").open("wb")
            command = [sys.executable, "-m", "services.webhooks"]
            if args.cpu_profile is not None:
                args.cpu_profile.mkdir(parents=True, exist_ok=True)
                out = str(args.cpu_profile / f"webhooks{len(dispatchers)}-{time.time():.0f}.prof")
                command = [sys.executable, "-m", "bench.cpu_profile", out, "services.webhooks"]
            dispatchers.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=service_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop_dispatchers() -> None:
        for p in dispatchers:
            p.send_signal(signal.SIGTERM)
        for p in dispatchers:
            p.wait(timeout=60)
        dispatchers.clear()

    stopping = asyncio.Event()
    publisher = OutboxPublisher(
        engine,
        env["STREAMSEG_KAFKA_BOOTSTRAP"],
        stack.changes,
        SegmenterMetrics(CollectorRegistry()),
        security=stack_connection(env).kafka_security(),
    )
    publishing = asyncio.create_task(publisher.run(stopping))
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
    }
    try:

        async def listening() -> bool:
            return port_file.exists()

        await wait_for(listening, time.monotonic() + 30)
        url = f"http://127.0.0.1:{port_file.read_text()}/hook"
        sample = encode_segment_change(
            _change("c000001", 2, datetime.now(UTC)), change_id=str(uuid.uuid4())
        )
        report["raw_posts_per_s"] = round(await raw_baseline(url, sample, args.raw, 32), 1)
        async with pg_connection(engine) as conn:
            await conn.execute(
                "INSERT INTO webhook_subscriptions (id, url, secret, created_by, created_at) "
                "VALUES ($1, $2, $3, 'bench', now() - interval '1 minute')",
                uuid.uuid4(),
                url,
                new_secret(),
            )
        committer = Committer(engine, args.customers)

        # Sustained rate.
        start_dispatchers()
        await asyncio.sleep(5)  # start-up, group join
        batch = max(1, args.rate // 20)
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            tick = time.perf_counter()
            await committer.commit(batch)
            publisher.wake()
            await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - tick)))
        sustained_ids = set(committer.committed)
        report["sustained_committed_per_s"] = round(
            len(sustained_ids) / (time.perf_counter() - started), 1
        )

        async def delivered() -> int:
            async with pg_connection(engine) as conn:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
                    )
                )

        async def delivered_at_least(n: int) -> bool:
            return await delivered() >= n

        deadline = time.monotonic() + 120
        await wait_for(lambda: delivered_at_least(len(sustained_ids)), deadline)
        stop_dispatchers()

        # Burst: committed and published while no dispatcher runs.
        for _ in range(args.burst // 500):
            await committer.commit(500)
        publisher.wake()

        async def outbox_empty() -> bool:
            async with pg_connection(engine) as conn:
                return bool(await conn.fetchval("SELECT count(*) FROM segment_outbox") == 0)

        await wait_for(outbox_empty, time.monotonic() + 120)
        burst_ids = set(committer.committed) - sustained_ids
        start_dispatchers()
        deadline = time.monotonic() + 300
        await wait_for(lambda: delivered_at_least(len(committer.committed)), deadline)
        stop_dispatchers()
    finally:
        stopping.set()
        await publishing
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=60)
        print(f"logs in {work}", file=sys.stderr)
    arrivals = read_arrivals(arrivals_file)
    latencies = [arrivals[i] - committer.committed[i] for i in sustained_ids if i in arrivals]
    report["sustained"] = {
        "delivered": len(latencies),
        "of": len(sustained_ids),
        "commit_to_delivery": percentiles(latencies),
    }
    burst_times = sorted(arrivals[i] for i in burst_ids if i in arrivals)
    report["burst"] = {
        "delivered": len(burst_times),
        "of": len(burst_ids),
        "deliveries_per_s": round(len(burst_times) / (burst_times[-1] - burst_times[0]), 1)
        if len(burst_times) > 1
        else None,
    }
    print(json.dumps(report, indent=2))
    with contextlib.suppress(Exception):
        await stack.drop(env, engine)


if __name__ == "__main__":
    if sys.argv[1:2] == ["receiver"]:
        receiver_main(sys.argv[2], sys.argv[3])
    else:
        asyncio.run(main())
