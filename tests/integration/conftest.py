"""Fixtures of the integration tests that drive real service processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.kafka import delete_topics, dlq_topic
from tests.conftest import MakeTopic, unique
from tests.support.ingest import Harness, Topics


@pytest.fixture
async def harness(
    make_topic: MakeTopic,
    service_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    topics = Topics(
        await make_topic("orders", 4),
        await make_topic("interactions", 4),
        await make_topic("customers", 4),
    )
    env = service_env | {
        "STREAMSEG_INGEST_ORDERS_TOPIC": topics.orders,
        "STREAMSEG_INGEST_INTERACTIONS_TOPIC": topics.interactions,
        "STREAMSEG_INGEST_CUSTOMERS_TOPIC": topics.customers,
        "STREAMSEG_INGEST_GROUP_ID": unique("g"),
        "STREAMSEG_INGEST_OPS_PORT": "0",
        "STREAMSEG_INGEST_MAX_BATCH_RECORDS": "2000",
        "STREAMSEG_LOG_JSON": "false",
    }
    h = Harness(topics, env, service_env["STREAMSEG_KAFKA_BOOTSTRAP"], engine, tmp_path, [])
    try:
        yield h
    finally:
        for w in h.workers:
            w.ensure_dead()
        # The worker creates the dead-letter topics; they go with the test's own topics.
        await delete_topics(h.bootstrap, [dlq_topic(t) for t in topics.all()])
