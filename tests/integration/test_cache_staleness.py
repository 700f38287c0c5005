"""Once the segmenter has committed an evaluation, the API never serves an older cached
document: not when the write after commit fails, and not when Redis could not be marked stale
before the commit and comes back holding the old document (the repair loop drops it).

Redis is made to fail for real, on a private instance: `CLIENT PAUSE WRITE` lets it answer
reads (the API's) while every write (the segmenter's scripts) waits and times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter.cache import CacheRepairer
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.redis import make_redis
from shared.segment_cache import SegmentCache
from shared.settings import ConnectionSettings
from tests.conftest import eventually
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.support.instances import private_stack
from tests.support.segmenter import History, evaluator, ruleset, scalar, seed, segments

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = datetime(2026, 6, 1, tzinfo=UTC)
# Long after the first order: the customer's lifecycle segment has moved by then.
LATER = NOW + timedelta(days=200)
CUSTOMER = "c-stale"


@pytest.fixture
def private_redis(stack_env: dict[str, str], tmp_path: Path, settings: ConnectionSettings) -> Any:
    with private_stack(stack_env, tmp_path, "redis") as stack:
        yield settings.model_copy(update={"redis_url": stack.env["STREAMSEG_REDIS_URL"]})


@pytest.fixture
async def redis(private_redis: ConnectionSettings) -> AsyncIterator[Redis]:
    client = make_redis(private_redis.redis_url)
    try:
        yield client
    finally:
        await client.client_unpause()
        await client.aclose()


async def _first_evaluation(engine: AsyncEngine, cache: SegmentCache) -> Any:
    """The customer evaluated once at NOW, its document in Redis; returns the evaluator's
    ruleset."""
    await seed(engine, [History(CUSTOMER, orders=[(NOW - timedelta(days=10), Decimal(50))])], NOW)
    rules = await ruleset(engine)
    assert await evaluator(engine, cache, FixedClock(NOW), rules).evaluate_due() == 1
    doc = await cache.get(CUSTOMER)
    assert doc is not None
    assert doc.version == 1
    return rules


async def _api_answers(settings: ConnectionSettings, engine: AsyncEngine) -> list[dict[str, Any]]:
    """The customer as the fast path, FastAPI's route and the batch read answer it."""
    headers = bearer(await make_key(engine, "segments:read"))
    answers = []
    for fast_path in (True, False):
        async with running_api(settings, fast_path=fast_path) as (_, client):
            single = await client.get(f"/v1/customers/{CUSTOMER}/segments", headers=headers)
            assert single.status_code == 200, single.text
            answers.append(single.json())
            if fast_path:
                batch = await client.post(
                    "/v1/customers/segments:batch",
                    json={"customer_ids": [CUSTOMER]},
                    headers=headers,
                )
                assert batch.status_code == 200, batch.text
                answers.append(batch.json()["customers"][0])
    return answers


async def _stored_segments(engine: AsyncEngine) -> dict[str, str]:
    return {d: s for (c, d), s in (await segments(engine)).items() if c == CUSTOMER}


async def test_a_failed_write_after_commit_leaves_postgres_answering(
    engine: AsyncEngine, redis: Redis, private_redis: ConnectionSettings
) -> None:
    cache = SegmentCache(redis, private_redis.redis_key_prefix)
    rules = await _first_evaluation(engine, cache)
    before = await _stored_segments(engine)

    # Hold the customer's evaluation row, so the second evaluation stops inside its
    # transaction, after anything it does before; Redis stops taking writes right then.
    async with pg_connection(engine) as locker:
        locker_tx = locker.transaction()
        await locker_tx.start()
        await locker.execute(
            "SELECT 1 FROM customer_evaluations WHERE customer_id = $1 FOR UPDATE", CUSTOMER
        )
        locker_pid = await locker.fetchval("SELECT pg_backend_pid()")
        second = asyncio.create_task(
            evaluator(engine, cache, FixedClock(LATER), rules).evaluate_due()
        )

        async def is_waiting() -> bool:
            assert not second.done(), second
            waiting = await scalar(
                engine,
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))",
                pid=locker_pid,
            )
            return bool(waiting)

        await eventually(is_waiting, message="the evaluation waiting in its transaction")
        await redis.client_pause(60_000, all=False)
        await locker_tx.rollback()
    assert await second == 1

    after = await _stored_segments(engine)
    assert after != before  # the second evaluation committed a change
    assert await scalar(engine, "SELECT version FROM customer_evaluations") == 2
    for answer in await _api_answers(private_redis, engine):
        assert answer["source"] == "database", answer
        assert {d: s["segment"] for d, s in answer["segments"].items()} == after


async def test_repair_drops_the_old_document_redis_kept_while_it_refused_the_mark(
    engine: AsyncEngine, redis: Redis, private_redis: ConnectionSettings
) -> None:
    cache = SegmentCache(redis, private_redis.redis_key_prefix)
    rules = await _first_evaluation(engine, cache)
    await redis.client_pause(60_000, all=False)
    # Redis refuses the mark before commit: the evaluation commits all the same, and queues
    # the customer for repair in the same transaction.
    assert await evaluator(engine, cache, FixedClock(LATER), rules).evaluate_due() == 1
    assert await scalar(engine, "SELECT version FROM customer_evaluations") == 2
    assert (
        await scalar(engine, "SELECT version FROM cache_repairs WHERE customer_id = 'c-stale'") == 2
    )

    # Redis takes writes again, still holding the first evaluation's document.
    await redis.client_unpause()
    old = await cache.get(CUSTOMER)
    assert old is not None
    assert old.version == 1
    stopping = asyncio.Event()
    repairer = asyncio.create_task(CacheRepairer(engine, cache, interval_seconds=0.1).run(stopping))
    try:

        async def is_repaired() -> bool:
            assert not repairer.done(), repairer
            queued = await scalar(engine, "SELECT count(*) FROM cache_repairs")
            return queued == 0 and await cache.get(CUSTOMER) is None

        await eventually(is_repaired, message="the stale document dropped, the row drained")
    finally:
        stopping.set()
        await repairer
    after = await _stored_segments(engine)
    for answer in await _api_answers(private_redis, engine):
        assert answer["source"] == "database", answer
        assert {d: s["segment"] for d, s in answer["segments"].items()} == after
