"""Erasure on request: every row naming the customer goes, the cache refuses late writes,
an evaluation in flight is waited for, and the erasure is audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.erasure.repository import ERASED_TABLES
from shared.db.engine import pg_connection
from shared.db.leases import customer_lease_key
from shared.segment_cache import SegmentCache
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import (
    Change,
    Customer,
    bearer,
    make_key,
    running_api,
    seed_cache,
    seed_database,
    seed_history,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def client(settings: ConnectionSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings) as (_, http):
        yield http


async def seed_everywhere(engine: AsyncEngine, redis: Redis, prefix: str, cid: str) -> None:
    """A row of `cid` in every table that holds a customer's data, and its cached document."""
    customer = Customer(cid, NOW - timedelta(minutes=5))
    await seed_database(engine, [customer])
    await seed_cache(redis, prefix, [customer])
    await seed_history(engine, [Change(cid, "lifecycle", None, "new", NOW)])
    async with engine.begin() as conn:
        for sql in (
            "INSERT INTO orders (customer_id, order_id, placed_at, amount)"
            " VALUES (:c, :c || '-o1', :now, 10)",
            "INSERT INTO interactions (customer_id, occurred_at, type) VALUES (:c, :now, 'login')",
            "INSERT INTO segmentation_queue (customer_id, due_at) VALUES (:c, :now)",
            "INSERT INTO segment_outbox (customer_id, change_id, payload)"
            " VALUES (:c, gen_random_uuid(), '{}')",
            "INSERT INTO cache_repairs (customer_id, version) VALUES (:c, 1)",
            'INSERT INTO customer_traits (customer_id, traits) VALUES (:c, \'{"city": "Graz"}\')',
            "INSERT INTO fact_changes (customer_id, order_id) VALUES (:c, :c || '-o1')",
            "INSERT INTO metric_contributions (customer_id, filter_key, ref, at)"
            " VALUES (:c, 'f', 'o:' || :c || '-o1', :now)",
            "INSERT INTO customer_metrics (customer_id, as_of) VALUES (:c, :now)",
            "INSERT INTO import_runs (run_id, publish, until, reject_path)"
            " VALUES ('r-' || :c, 'none', :now, 'rejects.jsonl')",
            "INSERT INTO import_customers (run_id, customer_id) VALUES ('r-' || :c, :c)",
        ):
            await conn.execute(text(sql), {"c": cid, "now": NOW})


async def rows_of(engine: AsyncEngine, cid: str) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table: (
                await conn.execute(
                    text(f"SELECT count(*) FROM {table} WHERE customer_id = :c"),  # noqa: S608
                    {"c": cid},
                )
            ).scalar_one()
            for table in ERASED_TABLES
        }


async def test_erasure_removes_every_row_and_the_cached_document(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings, client: httpx.AsyncClient
) -> None:
    prefix = settings.redis_key_prefix
    await seed_everywhere(engine, redis, prefix, "c-erase")
    await seed_everywhere(engine, redis, prefix, "c-keep")
    assert 0 not in (await rows_of(engine, "c-erase")).values()  # seeded everywhere
    admin = bearer(await make_key(engine, "admin"))

    r = await client.delete("/v1/customers/c-erase", headers=admin)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["found"] is True
    assert set(body["rows_erased"]) == set(ERASED_TABLES)
    assert all(n >= 1 for n in body["rows_erased"].values()), body
    assert set((await rows_of(engine, "c-erase")).values()) == {0}
    assert 0 not in (await rows_of(engine, "c-keep")).values()  # nobody else's rows
    reader = bearer(await make_key(engine, "segments:read"))
    gone = await client.get("/v1/customers/c-erase/segments", headers=reader)
    assert gone.status_code == 404, gone.text
    kept = await client.get("/v1/customers/c-keep/segments", headers=reader)
    assert kept.json()["source"] == "cache"
    # An evaluation that read the customer before the erasure cannot write it back.
    cache = SegmentCache(redis, prefix)
    late = Customer("c-erase", NOW).cached()
    assert await cache.put_many([late]) == 0
    assert await cache.get("c-erase") is None
    async with engine.connect() as conn:
        audited = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM audit_log"
                    " WHERE action = 'customer.erase' AND customer_id = 'c-erase'"
                )
            )
        ).scalar_one()
    assert audited == 1
    again = await client.delete("/v1/customers/c-erase", headers=admin)
    assert again.status_code == 200
    assert again.json()["found"] is False


async def test_erasure_waits_for_an_evaluation_in_flight(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings, client: httpx.AsyncClient
) -> None:
    await seed_everywhere(engine, redis, settings.redis_key_prefix, "c-busy")
    admin = bearer(await make_key(engine, "admin"))
    async with pg_connection(engine) as segmenter:
        # The lease a segmenter takes (services/segmenter/queue.py) while it evaluates.
        leased = await segmenter.fetchval(
            f"SELECT pg_try_advisory_lock({customer_lease_key('$1')})", "c-busy"
        )
        assert leased
        erasing = asyncio.create_task(client.delete("/v1/customers/c-busy", headers=admin))
        await asyncio.sleep(0.5)
        assert not erasing.done()
        assert (await rows_of(engine, "c-busy"))["customer_aggregates"] == 1
        await segmenter.execute("SELECT pg_advisory_unlock_all()")
        r = await asyncio.wait_for(erasing, 10)
    assert r.status_code == 200, r.text
    assert set((await rows_of(engine, "c-busy")).values()) == {0}


@pytest.mark.parametrize(("scopes", "status"), [((), 401), (("segments:read",), 403)])
async def test_erasure_needs_the_admin_scope(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    scopes: tuple[str, ...],
    status: int,
) -> None:
    await seed_everywhere(engine, redis, settings.redis_key_prefix, "c-safe")
    headers = bearer(await make_key(engine, *scopes)) if scopes else {}
    r = await client.delete("/v1/customers/c-safe", headers=headers)
    assert r.status_code == status, r.text
    assert 0 not in (await rows_of(engine, "c-safe")).values()
