"""The load generator CLI sends a decodable, seeded history and then live events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.events import Event, decode_event
from shared.kafka import make_consumer
from tests.conftest import ROOT, MakeTopic, unique

pytestmark = pytest.mark.integration


async def test_loadgen_sends_history_then_live_events(
    make_topic: MakeTopic, service_env: dict[str, str]
) -> None:
    orders, interactions = await make_topic("orders", 2), await make_topic("interactions", 2)
    started = datetime.now(UTC)
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.loadgen",
            "--rate",
            "200",
            "--customers",
            "40",
            "--duration",
            "2",
            "--seed",
            "3",
            "--orders-topic",
            orders,
            "--interactions-topic",
            interactions,
        ],
        cwd=ROOT,
        env=service_env | {"STREAMSEG_LOG_JSON": "false"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    consumer = make_consumer(
        service_env["STREAMSEG_KAFKA_BOOTSTRAP"], orders, interactions, group_id=unique("g")
    )
    await consumer.start()
    events: list[Event] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(events) < 40 * 3 + 300:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch and len(events) >= 40 * 3:
                break
            for records in batch.values():
                events.extend(decode_event(r.value) for r in records)
    finally:
        await consumer.stop()
    history = [e for e in events if e.occurred_at < started]
    live = [e for e in events if e.occurred_at >= started]
    assert len(history) == 40 * 3
    assert min(e.occurred_at for e in history) > started - timedelta(days=401)
    assert 200 <= len(live) <= 600  # about 2 s at 200/s, with start-up slack
    assert len({e.event_id for e in events}) == len(events)
