"""What is in force is visible: once a version without a dimension is activated, that
dimension is gone from every answer within about a second, though no segmenter has
re-evaluated anyone yet (their cached documents and segment rows still hold it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.definitions.activation import activate_content
from shared.segment_cache import customer_key
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually
from tests.integration.test_api_support import (
    Change,
    Customer,
    bearer,
    make_key,
    running_api,
    seed_cache,
    seed_database,
    seed_definitions,
    seed_history,
    unit_of_work,
)

pytestmark = pytest.mark.integration

REMOVED = "engagement"
SCORES: dict[str, int | None] = {"r_score": 4, "f_score": 2, "m_score": 5}


def without_engagement_and_m_score() -> str:
    """The default definitions less a dimension and a score no rule reads."""
    data = yaml.safe_load((ROOT / "shared/segmentation/definitions/default.yaml").read_text())
    del data["dimensions"][REMOVED]
    del data["scores"]["m_score"]
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(params=[True, False], ids=["fast_path", "fastapi"])
async def client(
    request: pytest.FixtureRequest, settings: ConnectionSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    key = await make_key(engine, "segments:read")
    # A cache read that a busy machine delays past the usual 50 ms would answer from the
    # database, and these tests need to know which source answers.
    async with running_api(settings, fast_path=request.param, cache_timeout_ms=2000) as (_, http):
        http.headers.update(bearer(key))
        yield http


async def test_a_removed_dimension_leaves_every_answer(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    v1 = await seed_definitions(engine)
    cached, stored = Customer("c-1", now, scores=SCORES), Customer("c-2", now, scores=SCORES)
    await seed_database(engine, [cached, stored])
    await seed_cache(redis, settings.redis_key_prefix, [cached])
    await seed_history(engine, [Change("c-1", REMOVED, None, "engaged", now)])
    ids = {"customer_ids": ["c-1", "c-2"]}
    since = (now - timedelta(hours=1)).isoformat()

    async def transitions(**params: str) -> dict[str, Any]:
        r = await client.get("/v1/stats/transitions", params={"since": since, **params})
        return dict(r.json())

    async def answers() -> list[dict[str, Any]]:
        single = [(await client.get(f"/v1/customers/{c}/segments")).json() for c in ("c-1", "c-2")]
        batch = (await client.post("/v1/customers/segments:batch", json=ids)).json()
        return [*single, *batch["customers"]]

    before = await answers()
    assert [a["source"] for a in before] == ["cache", "database", "cache", "database"]
    assert all(REMOVED in a["segments"] and "m_score" in a["scores"] for a in before)
    assert (await transitions())["total"] == 1

    async with unit_of_work(engine) as conn:
        v2 = await activate_content(
            conn, without_engagement_and_m_score(), replaces=v1, actor="test"
        )

    async def is_gone() -> bool:
        return all(
            REMOVED not in a["segments"] and "m_score" not in a["scores"] for a in await answers()
        )

    await eventually(is_gone, within_seconds=2, interval=0.05, message="engagement gone")
    after = await answers()
    assert [a["source"] for a in after] == ["cache", "database", "cache", "database"]
    assert all(a["scores"] == {"f_score": 2, "r_score": 4} for a in after)
    assert all(set(a["segments"]) == {"lifecycle", "value_tier", "rfm"} for a in after)
    assert all(a["definition_version"] == v1 for a in after)  # what was evaluated, and when

    # From PostgreSQL as well once the cached document is gone.
    await redis.delete(customer_key(settings.redis_key_prefix, "c-1"))
    fallback = (await client.get("/v1/customers/c-1/segments")).json()
    assert fallback["source"] == "database"
    assert REMOVED not in fallback["segments"]
    assert fallback["segments"] == after[0]["segments"]

    members = await client.get(f"/v1/segments/{REMOVED}/engaged/members")
    assert (members.status_code, members.json()["error"]) == (404, "dimension_not_found")
    segments = (await client.get("/v1/segments")).json()
    assert segments["version"] == v2.version
    assert REMOVED not in [d["name"] for d in segments["dimensions"]]
    assert [s["name"] for s in segments["scores"]] == ["r_score", "f_score"]
    assert (await transitions())["total"] == 0
    assert (await transitions(dimension=REMOVED))["transitions"] == []


async def test_an_evaluation_under_the_version_in_force_is_answered_whole(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
) -> None:
    """Nothing is filtered out of an evaluation made under the version in force, nor out of
    one made under a version newer than the process has seen."""
    now = datetime.now(UTC).replace(microsecond=0)
    v1 = await seed_definitions(engine)
    current = Customer("c-now", now, scores=SCORES, definition_version=v1)
    newer = Customer("c-new", now, segments={"loyalty": "gold"}, definition_version=v1 + 1)
    await seed_database(engine, [current, newer])
    await seed_cache(redis, settings.redis_key_prefix, [current, newer])

    body = (await client.get("/v1/customers/c-now/segments")).json()
    newest = (await client.get("/v1/customers/c-new/segments")).json()

    assert set(body["segments"]) == set(current.segments)
    assert body["scores"] == {"f_score": 2, "m_score": 5, "r_score": 4}
    assert set(newest["segments"]) == {"loyalty"}


async def test_cached_reads_do_not_wait_for_a_postgres_that_hangs(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings
) -> None:
    """While the version in force cannot be read, cached reads go on with the last one known:
    each waits for the read at most briefly, once a second."""
    now = datetime.now(UTC).replace(microsecond=0)
    await seed_definitions(engine)
    customer = Customer("c-1", now)
    await seed_database(engine, [customer])
    await seed_cache(redis, settings.redis_key_prefix, [customer])
    key = bearer(await make_key(engine, "segments:read"))
    # Waiting for the read would cost the whole database time-out, waiting briefly 50 ms.
    api = {"database_timeout_ms": 1000, "cache_timeout_ms": 2000}
    async with running_api(settings, **api) as (_, client):
        assert (await client.get("/v1/customers/c-1/segments", headers=key)).status_code == 200
        async with unit_of_work(engine) as conn, conn.transaction():
            # Until this transaction ends, reading the version in force hangs.
            await conn.execute("LOCK TABLE definitions_in_force IN ACCESS EXCLUSIVE MODE")
            loop = asyncio.get_running_loop()
            started = loop.time()
            slowest = 0.0
            # Past two refreshes: one that times out, and the one after it.
            while loop.time() - started < 2.5:
                sent = loop.time()
                r = await client.get("/v1/customers/c-1/segments", headers=key)
                slowest = max(slowest, loop.time() - sent)
                assert (r.status_code, r.json()["source"]) == (200, "cache"), r.text
                assert set(r.json()["segments"]) == set(customer.segments)
    assert slowest < 0.5
