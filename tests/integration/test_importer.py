"""The historical import against real PostgreSQL (and, for the comparison, the same history
streamed through real Kafka into the real ingest service): aggregates, the read model and
segments equal; re-runs and overlapping exports change nothing; kill -9 then resume is
exact; bad rows are in the reject file with their lines."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.importer import segments
from services.importer.importer import Importer, ImportFile, file_key
from services.importer.mapping import ColumnMapping
from services.importer.progress import Progress
from services.importer.repository import start_run
from services.ingest.settings import IngestSettings
from shared.clock import FixedClock, SystemClock
from shared.db.engine import create_engine, driver_connection
from shared.db.migrate import upgrade
from shared.events import Event, InteractionEvent, OrderEvent
from shared.events.import_completed import IMPORT_EVENT_KEY, decode_import_completed
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.segment_cache import SegmentCache
from shared.settings import ConnectionSettings
from shared.workload import Workload
from tests.conftest import ROOT, eventually, unique
from tests.support.checker import differences, expected_aggregates
from tests.support.ingest import Harness, as_records, produce, read_aggregates
from tests.support.segmenter import evaluator, ruleset

pytestmark = pytest.mark.integration

RATES = IngestSettings().currency_rates
ORDER_COLUMNS = ("Order ID", "Customer ID", "Type", "Created At", "Total", "Currency", "Channel")
AGGREGATE_COLUMNS = """customer_id, order_count, net_spend, first_order_at, last_order_at,
    interaction_count, last_interaction_at, last_add_to_cart_at, last_event_at,
    add_to_cart_count, email_click_count, email_open_count, login_count, page_view_count,
    product_view_count, review_count, search_count, support_ticket_count"""


def history(seed: int, n: int, customers: int = 60, order_share: float = 0.25) -> list[Event]:
    end = datetime.now(UTC) - timedelta(hours=2)
    work = Workload(
        seed=seed,
        customers=customers,
        start=end - timedelta(days=400),
        end=end,
        order_share=order_share,
    )
    return list(work.events(n))


def orders_of(events: Sequence[Event]) -> list[OrderEvent]:
    return [e for e in events if isinstance(e, ORDER_EVENT_CLASSES)]


def order_cells(e: OrderEvent) -> tuple[str, ...]:
    return (
        e.order_id,
        e.customer_id,
        e.type,
        e.occurred_at.isoformat(),
        str(e.amount),
        e.currency,
        e.channel or "",
    )


def write_orders_csv(path: Path, events: Sequence[OrderEvent], extra: Sequence[Any] = ()) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ORDER_COLUMNS)
        for e in events:
            w.writerow(order_cells(e))
        for row in extra:
            w.writerow(row)


def write_orders_parquet(path: Path, events: Sequence[OrderEvent]) -> None:
    cells = [order_cells(e) for e in events]
    table = pa.table(
        {name: [c[i] for c in cells] for i, name in enumerate(ORDER_COLUMNS)}
        | {"Created At": pa.array([e.occurred_at for e in events], pa.timestamp("us", "UTC"))}
    )
    pq.write_table(table, path)


def write_interactions_jsonl(path: Path, events: Sequence[Event]) -> None:
    with path.open("wb") as f:
        for e in events:
            if not isinstance(e, InteractionEvent):
                continue
            row = {
                "customer_id": e.customer_id,
                "event": e.type,
                "timestamp": e.occurred_at.isoformat(),
                "properties": orjson.dumps(e.properties).decode(),
            }
            f.write(orjson.dumps(row) + b"\n")


def importer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.importer", *args]


async def run_importer(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run the importer to its end; its working directory (where a default reject file
    goes) is the test's own."""
    proc = await asyncio.create_subprocess_exec(
        *importer_command(*args),
        cwd=env["IMPORTER_TEST_CWD"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    result["stderr"] = err.decode()
    return result


@pytest.fixture
async def imports(
    settings: ConnectionSettings, service_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[tuple[AsyncEngine, dict[str, str]]]:
    """A second schema, for the import, beside the test's own (which ingest writes)."""
    schema = unique("imp")
    engine = create_engine(settings.database_url, schema)
    await upgrade(engine, schema)
    env = service_env | {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_LOG_JSON": "false",
        "STREAMSEG_IMPORTER_PROGRESS_INTERVAL_SECONDS": "0.2",
        "IMPORTER_TEST_CWD": str(tmp_path),
    }
    try:
        yield engine, env
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Everything an import changes that a comparison needs: aggregates, orders, kept
    interactions (without their event ids, which differ between the two paths)."""
    return {
        "aggregates": await rows(
            engine,
            f"SELECT {AGGREGATE_COLUMNS} FROM customer_aggregates ORDER BY 1",  # noqa: S608
        ),
        "orders": await rows(
            engine,
            "SELECT customer_id, order_id, placed_at, amount, refunded, cancelled_at, channel,"
            " currency FROM orders ORDER BY 1, 2",
        ),
        "interactions": await rows(
            engine,
            "SELECT customer_id, occurred_at, type, properties::text FROM interactions"
            " ORDER BY 1, 2, 3, 4",
        ),
    }


async def evaluate_all(engine: AsyncEngine, redis: Redis, prefix: str, now: datetime) -> None:
    rules = await ruleset(engine)
    ev = evaluator(engine, SegmentCache(redis, prefix), FixedClock(now), rules)
    while await ev.evaluate_due():
        pass


async def test_an_import_equals_the_same_history_streamed(
    harness: Harness,
    imports: tuple[AsyncEngine, dict[str, str]],
    redis: Redis,
    settings: ConnectionSettings,
    tmp_path: Path,
) -> None:
    engine, env = imports
    events = history(seed=31, n=2500)
    orders_csv, interactions_jsonl = tmp_path / "orders.csv", tmp_path / "interactions.jsonl"
    write_orders_csv(orders_csv, orders_of(events))
    write_interactions_jsonl(interactions_jsonl, events)
    until = datetime.now(UTC).isoformat()
    command = (
        "--orders",
        str(orders_csv),
        "--interactions",
        str(interactions_jsonl),
        "--until",
        until,
        "--publish",
        "summary",
        "--no-wait",
    )

    harness.worker()
    produced = await produce(harness.bootstrap, as_records(events, harness.topics))
    result = await run_importer(env, *command)
    assert result["imported"] == len(events), result["stderr"]
    assert (result["rejected"], result["duplicates"]) == (0, 0)
    assert "rows/s" in result["stderr"]
    assert "ETA" in result["stderr"]
    await harness.wait_caught_up(produced)

    streamed, imported = await snapshot(harness.engine), await snapshot(engine)
    assert streamed == imported
    as_of = datetime.now(UTC)
    expected = expected_aggregates(events, RATES, as_of)
    assert not differences(expected, await read_aggregates(engine, as_of))
    assert await read_aggregates(engine, as_of) == await read_aggregates(harness.engine, as_of)

    # Segments: the same after the segmenter ran on each; the import's history is one row
    # per customer and dimension, cause "import", and under publish: summary none of it
    # is published one by one.
    await evaluate_all(harness.engine, redis, settings.redis_key_prefix + "s:", as_of)
    await evaluate_all(engine, redis, settings.redis_key_prefix + "i:", as_of)
    segments_sql = "SELECT customer_id, dimension, segment FROM customer_segments ORDER BY 1, 2"
    streamed_segments = await rows(harness.engine, segments_sql)
    assert streamed_segments == await rows(engine, segments_sql)
    history_rows = await rows(
        engine, "SELECT customer_id, dimension, cause, to_segment FROM segment_history"
    )
    assert {r[2] for r in history_rows} == {"import"}
    assert sorted((r[0], r[1], r[3]) for r in history_rows) == streamed_segments
    assert await rows(engine, "SELECT count(*) FROM segment_outbox") == [(0,)]

    # The same command again waits for the segmenter (done) and publishes the summary.
    again = await run_importer(env, *command[:-1])
    assert again["segmented"]
    assert again["rows_this_time"] == 0
    outbox = await rows(engine, "SELECT customer_id, payload FROM segment_outbox")
    assert [r[0] for r in outbox] == [IMPORT_EVENT_KEY]
    summary = decode_import_completed(outbox[0][1]).data
    assert summary.customers == len({e.customer_id for e in events})
    assert summary.moved == len(history_rows)


async def test_importing_again_or_an_overlapping_export_changes_nothing(
    imports: tuple[AsyncEngine, dict[str, str]],
    redis: Redis,
    settings: ConnectionSettings,
    tmp_path: Path,
) -> None:
    engine, env = imports
    events = orders_of(history(seed=32, n=1000, order_share=1.0))
    first, second = events[: len(events) * 2 // 3], events[len(events) // 3 :]
    csv_path, parquet_path = tmp_path / "orders.csv", tmp_path / "later-export.parquet"
    write_orders_csv(csv_path, first)
    write_orders_parquet(parquet_path, list(reversed(second)))
    until = datetime.now(UTC).isoformat()

    await run_importer(env, "--orders", str(csv_path), "--until", until, "--no-wait")
    before = await snapshot(engine)
    again = await run_importer(env, "--orders", str(csv_path), "--until", until, "--no-wait")
    assert again["rows_this_time"] == 0
    assert await snapshot(engine) == before

    # The customers now have read-model state (the segmenter read them), so the next
    # import's orders reach it through fact_changes, as ingest's do.
    await evaluate_all(engine, redis, settings.redis_key_prefix, datetime.now(UTC))
    assert await rows(engine, "SELECT count(*) > 0 FROM customer_metrics") == [(True,)]

    # A later export that overlaps the first by half, in another format and order: only
    # the rows not imported before count.
    overlap = await run_importer(env, "--orders", str(parquet_path), "--until", until, "--no-wait")
    assert overlap["rows_read"] == len(second)
    assert overlap["imported"] == len(events) - len(first)
    assert overlap["duplicates"] == len(first) - len(events) // 3
    assert await rows(engine, "SELECT count(*) > 0 FROM fact_changes") == [(True,)]
    as_of = datetime.now(UTC)
    problems = differences(
        expected_aggregates(events, RATES, as_of), await read_aggregates(engine, as_of)
    )
    assert not problems, problems[:5]


async def test_kill_9_in_the_middle_then_resume_is_exact(
    imports: tuple[AsyncEngine, dict[str, str]], tmp_path: Path
) -> None:
    engine, env = imports
    events = orders_of(history(seed=33, n=20_000, customers=2000, order_share=1.0))
    bad = [("x1", "c-bad", "", "2024-01-01T00:00:00Z", "abc", "EUR", "")]
    path = tmp_path / "orders.csv"
    write_orders_csv(path, events, extra=bad)
    rejects = tmp_path / "rejects.jsonl"
    args = (
        "--orders",
        str(path),
        "--until",
        datetime.now(UTC).isoformat(),
        "--no-wait",
        "--rejects",
        str(rejects),
    )
    env = env | {"STREAMSEG_IMPORTER_CHUNK_ROWS": "500"}

    proc = await asyncio.create_subprocess_exec(
        *importer_command(*args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def some_committed() -> bool:
            done = await rows(engine, "SELECT coalesce(max(next_row), 0) FROM import_files")
            return int(done[0][0]) >= 2000

        await eventually(some_committed, within_seconds=60, message="chunks committed")
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    partial = await rows(engine, "SELECT next_row, done_at FROM import_files")
    assert partial[0][1] is None
    assert 0 < partial[0][0] < len(events)

    result = await run_importer(env, *args)
    assert result["rows_read"] == len(events) + 1
    assert (result["imported"], result["rejected"]) == (len(events), 1)
    assert result["rows_this_time"] == len(events) + 1 - partial[0][0]
    as_of = datetime.now(UTC)
    problems = differences(
        expected_aggregates(events, RATES, as_of), await read_aggregates(engine, as_of)
    )
    assert not problems, problems[:5]
    lines = rejects.read_bytes().splitlines()
    assert [orjson.loads(x)["line"] for x in lines] == [len(events) + 2]


async def test_bad_rows_go_to_the_reject_file_with_their_lines(
    imports: tuple[AsyncEngine, dict[str, str]], tmp_path: Path
) -> None:
    engine, env = imports
    path = tmp_path / "export.csv"
    path.write_text(
        "Order ID,Customer User ID,Order Date,Order Total,Order Currency\n"
        "1001,c1,2024-01-05 10:00:00,10.50,EUR\n"  # line 2: fine (naive: Europe/Berlin)
        "1002,c1,2024-02-05 10:00:00,12.x,EUR\n"  # 3: bad amount
        "1003,,2024-02-06 10:00:00,5,EUR\n"  # 4: no customer
        "1004,c2,2025-06-01 02:00:00,5,EUR\n"  # 5: at --until exactly
        "1005,c2,2025-07-01 00:00:00,5,EUR\n"  # 6: after --until
        "1006,c3,last tuesday,5,EUR\n"  # 7: unparseable time
        '1007,c3,"2024-03-01 09:30:00",-3,EUR\n'  # 8: negative amount
        "1008,c4,2024-03-01 09:30:00,7,XXX\n"  # 9: unknown currency
        "1009,c4,2024-03-01 09:30:00,7\n"  # 10: a cell short
    )
    rejects = tmp_path / "rejects.jsonl"
    result = await run_importer(
        env,
        "--orders",
        str(path),
        "--until",
        "2025-06-01 02:00:00",
        "--timezone",
        "Europe/Berlin",
        "--rejects",
        str(rejects),
        "--no-wait",
    )
    assert (result["rows_read"], result["imported"], result["rejected"]) == (9, 1, 8)
    got = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in got] == [
        (3, "schema_violation"),
        (4, "missing_customer"),
        (5, "at_or_after_until"),
        (6, "at_or_after_until"),
        (7, "unparseable_time"),
        (8, "schema_violation"),
        (9, "unknown_currency"),
        (10, "unreadable_row"),
    ]
    assert got[0]["detail"].startswith("$.amount")
    assert got[0]["row"]["Order Total"] == "12.x"
    assert got[0]["file"] == str(path)
    assert got[2]["detail"].startswith("2025-06-01T00:00:00+00:00 is not before")
    # The one good row: 10:00 in Berlin in January is 09:00 UTC.
    placed = await rows(engine, "SELECT placed_at FROM orders")
    assert placed == [(datetime(2024, 1, 5, 9, tzinfo=UTC),)]


async def test_a_customer_read_while_the_import_ran_is_rebuilt_when_queued(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings, tmp_path: Path
) -> None:
    """Orders go in without fact_changes for customers without read-model state. One whose
    state appears while the import runs (the segmenter read it between two chunks, from a
    snapshot without the later one) must not keep that state: queueing drops it."""
    events = orders_of(history(seed=34, n=600, customers=5, order_share=1.0))
    first, second = events[:300], events[300:]
    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    write_orders_csv(paths[0], first)
    write_orders_csv(paths[1], second)
    until = datetime.now(UTC)
    importer = Importer(
        engine,
        SystemClock(),
        rates=dict(RATES),
        retention=timedelta(days=31),
        chunk_rows=100,
        progress=Progress(io.StringIO()),
    )
    mapping = ColumnMapping("orders")
    files = [(file_key(p, "csv", mapping, until), ImportFile(p, "csv", mapping)) for p in paths]
    async with engine.connect() as sa:
        conn = await driver_connection(sa)
        run = await start_run(conn, "r1", "none", until, str(tmp_path / "rejects.jsonl"))
        await sa.commit()
    await importer.load(run, files[:1], tmp_path / "rejects.jsonl")
    now = datetime.now(UTC)
    await queue_for_test(engine, [e.customer_id for e in first], now)
    await evaluate_all(engine, redis, settings.redis_key_prefix, now)
    # The race, replayed: the state read after the first file, absent while the second
    # goes in (so no fact_changes), present again when the run queues its customers.
    stale = await rows(
        engine, "SELECT customer_id, as_of, filters, state::text, since::text FROM customer_metrics"
    )
    assert stale
    async with engine.begin() as sa:
        await sa.execute(text("DELETE FROM customer_metrics"))
    await importer.load(run, files, tmp_path / "rejects.jsonl")
    assert await rows(engine, "SELECT count(*) FROM fact_changes") == [(0,)]
    async with engine.begin() as sa:
        for r in stale:
            await sa.execute(
                text(
                    "INSERT INTO customer_metrics (customer_id, as_of, filters, state, since)"
                    " VALUES (:c, :a, :f, CAST(:s AS jsonb), CAST(:n AS jsonb))"
                ),
                {"c": r[0], "a": r[1], "f": r[2], "s": r[3], "n": r[4]},
            )
    await segments.queue(engine, SystemClock(), "r1")
    assert await rows(engine, "SELECT count(*) FROM customer_metrics") == [(0,)]
    as_of = datetime.now(UTC)
    await evaluate_all(engine, redis, settings.redis_key_prefix, as_of)
    problems = differences(
        expected_aggregates(events, RATES, as_of), await read_aggregates(engine, as_of)
    )
    assert not problems, problems[:5]


async def queue_for_test(engine: AsyncEngine, customer_ids: Sequence[str], at: datetime) -> None:
    async with engine.begin() as sa:
        await sa.execute(
            text(
                "INSERT INTO segmentation_queue (customer_id, due_at)"
                " SELECT DISTINCT unnest(CAST(:ids AS text[])), CAST(:at AS timestamptz)"
                " ON CONFLICT DO NOTHING"
            ),
            {"ids": list(customer_ids), "at": at},
        )
