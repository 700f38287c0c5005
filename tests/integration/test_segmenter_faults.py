"""A segmenter process rides out PostgreSQL crashing and restarting, on a private instance."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shared.db.engine import create_engine
from shared.db.migrate import upgrade
from shared.events import decode_segment_change
from shared.kafka import make_consumer
from shared.segmentation.facts import Interaction
from tests.conftest import MakeTopic, eventually, unique
from tests.support.instances import PrivateStack, private_stack
from tests.support.segmenter import History, run_segmenter, seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def private_postgres(stack_env: dict[str, str], tmp_path: Path) -> Iterator[PrivateStack]:
    with private_stack(stack_env, tmp_path / "stack", "postgres") as stack:
        yield stack


async def test_segmenter_keeps_evaluating_and_publishing_across_postgres_crashes(
    private_postgres: PrivateStack, make_topic: MakeTopic, tmp_path: Path
) -> None:
    stack = private_postgres
    schema = unique("faults")
    topic = await make_topic("changes", partitions=1)
    engine = create_engine(stack.env["STREAMSEG_DATABASE_URL"], schema)
    await upgrade(engine, schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    env |= stack.env | {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_REDIS_KEY_PREFIX": unique("t") + ":",
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": topic,
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "STREAMSEG_SEGMENTER_CLOCK": f"fixed:{NOW.isoformat()}",
        # Every loop talks to PostgreSQL often, so each is in a statement when it goes down.
        "STREAMSEG_SEGMENTER_STATS_REFRESH_SECONDS": "0.2",
        "STREAMSEG_SEGMENTER_IDLE_POLL_SECONDS": "0.05",
        "STREAMSEG_LOG_JSON": "false",
    }
    log_path = tmp_path / "segmenter.log"
    proc = run_segmenter(env, log_path)

    async def evaluated(customer_id: str) -> bool:
        assert proc.poll() is None, log_path.read_text()  # fail at once if it died
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM customer_segments WHERE customer_id = :c"),
                {"c": customer_id},
            )
            return bool(found.scalar_one() > 0)

    async def published_everything() -> bool:
        async with engine.connect() as conn:
            pending = await conn.execute(text("SELECT count(*) FROM segment_outbox"))
            return bool(pending.scalar_one() == 0)

    async def customer_comes_through(customer_id: str) -> None:
        history = History(customer_id, interactions=[Interaction(NOW - timedelta(days=1))])
        await seed(engine, [history], NOW)
        await eventually(lambda: evaluated(customer_id), within_seconds=60, message=customer_id)
        await eventually(published_everything, within_seconds=60, message="outbox drained")
        assert proc.poll() is None, log_path.read_text()

    try:
        await customer_comes_through("before")
        # kill -9 of one of its backends: the postmaster ends every connection and recovers.
        assert stack.crash_postgres_backend("segmenter")
        stack.wait_postgres_accepts()
        await engine.dispose()  # the test's own pooled connections died too
        await customer_comes_through("after-crash")
        # Down without a checkpoint and up again: refused connections, then recovery.
        stack.restart_postgres_immediately(down_seconds=1.0)
        stack.wait_postgres_accepts()
        await engine.dispose()
        await customer_comes_through("after-restart")
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT customer_id, change_id::text FROM segment_history")
            )
            history_ids = {(r.customer_id, r.change_id) for r in rows}
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        await engine.dispose()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "retrying" in output  # it did meet the faults, and rode them out
    published = {(e.subject, e.id) for e in await _read_all(env, topic, len(history_ids))}
    assert {c for c, _ in history_ids} == {"before", "after-crash", "after-restart"}
    assert history_ids <= published


async def _read_all(env: dict[str, str], topic: str, expect: int) -> list[Any]:
    consumer = make_consumer(env["STREAMSEG_KAFKA_BOOTSTRAP"], topic, group_id=unique("g"))
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len({e.id for e in out}) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(decode_segment_change(r.value) for r in records)
    finally:
        await consumer.stop()
    return out
