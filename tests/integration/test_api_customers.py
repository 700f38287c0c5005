"""Customer endpoints against real PostgreSQL and Redis: cache first, database fallback,
batch reads, history pages, and the error bodies of each failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.segment_cache import customer_key
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
async def reader(engine: AsyncEngine) -> dict[str, str]:
    return bearer(await make_key(engine, "segments:read"))


@pytest.fixture
async def client(settings: ConnectionSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings) as (_, http):
        yield http


async def test_cached_customer_is_served_from_redis(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    reader: dict[str, str],
) -> None:
    # From the moment the test runs, not the module's import: the suite may take minutes.
    evaluated = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    in_db = Customer("c-1", evaluated, segments={"value_tier": "high"})
    in_cache = Customer("c-1", evaluated, segments={"value_tier": "vip", "rfm": "champions"})
    await seed_database(engine, [in_db])
    await seed_cache(redis, settings.redis_key_prefix, [in_cache])

    r = await client.get("/v1/customers/c-1/segments", headers=reader)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "cache"
    assert {d: s["segment"] for d, s in body["segments"].items()} == in_cache.segments
    assert body["segments"]["rfm"]["reason"] == "rfm rule for c-1"
    assert body["segments"]["rfm"]["definition_version"] == 1
    assert datetime.fromisoformat(body["evaluated_at"]) == evaluated
    assert 300 <= body["staleness_seconds"] < 360
    assert body["aggregates"]["as_of"] == body["evaluated_at"]
    assert body["aggregates"]["net_spend"] == "250.5000"


async def test_uncached_customer_is_served_from_postgres(
    engine: AsyncEngine, client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    customer = Customer("shop:42@x", now - timedelta(hours=1), order_count=7)
    await seed_database(engine, [customer])

    r = await client.get("/v1/customers/shop:42@x/segments", headers=reader)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "database"
    assert {d: s["segment"] for d, s in body["segments"].items()} == customer.segments
    assert body["aggregates"]["order_count"] == 7
    assert datetime.fromisoformat(body["aggregates"]["as_of"]) >= now
    assert 3600 <= body["staleness_seconds"] < 3700


async def test_scores_from_the_cache_and_identically_from_postgres(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    reader: dict[str, str],
) -> None:
    scores = {"r_score": 3, "f_score": 2, "m_score": None}
    customer = Customer("c-s", NOW, scores=scores)
    await seed_database(engine, [customer])
    await seed_cache(redis, settings.redis_key_prefix, [customer])
    batch = {"customer_ids": ["c-s"]}

    cached = (await client.get("/v1/customers/c-s/segments", headers=reader)).json()
    cached_batch = await client.post("/v1/customers/segments:batch", json=batch, headers=reader)
    await redis.delete(customer_key(settings.redis_key_prefix, "c-s"))
    stored = (await client.get("/v1/customers/c-s/segments", headers=reader)).json()
    stored_batch = await client.post("/v1/customers/segments:batch", json=batch, headers=reader)

    assert (cached["source"], stored["source"]) == ("cache", "database")
    # The same object, in the same order, whichever source answers.
    assert list(cached["scores"].items()) == list(stored["scores"].items())
    assert cached["scores"] == {"f_score": 2, "m_score": None, "r_score": 3}
    assert cached["segments"] == stored["segments"]
    assert cached_batch.json()["customers"][0]["scores"] == cached["scores"]
    assert stored_batch.json()["customers"][0]["source"] == "database"
    assert stored_batch.json()["customers"][0]["scores"] == cached["scores"]


async def test_evaluations_from_before_scores_answer_no_scores(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    reader: dict[str, str],
) -> None:
    customer = Customer("c-old", NOW)  # a NULL scores column
    await seed_database(engine, [customer])
    # A document as the segmenter wrote it before scores were kept: without the field.
    document = msgspec.to_builtins(customer.cached())
    del document["scores"]
    key = customer_key(settings.redis_key_prefix, "c-old")
    await redis.hset(key, mapping={"v": "1", "doc": orjson.dumps(document)})

    cached = await client.get("/v1/customers/c-old/segments", headers=reader)
    await redis.delete(key)
    stored = await client.get("/v1/customers/c-old/segments", headers=reader)

    assert (cached.status_code, cached.json()["source"]) == (200, "cache")
    assert (stored.status_code, stored.json()["source"]) == (200, "database")
    assert cached.json()["scores"] == stored.json()["scores"] == {}


async def test_unknown_customer_is_404_with_an_error_body(
    client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    r = await client.get("/v1/customers/nobody/segments", headers=reader)
    assert r.status_code == 404
    assert r.json()["error"] == "customer_not_found"
    assert "nobody" in r.json()["detail"]


@pytest.mark.parametrize("bad_id", ["has space", "a" * 129, "semi;colon", "%C3%A9"])
async def test_malformed_customer_id_is_422(
    client: httpx.AsyncClient, reader: dict[str, str], bad_id: str
) -> None:
    r = await client.get(f"/v1/customers/{bad_id}/segments", headers=reader)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    assert r.json()["problems"][0]["location"] == "path.customer_id"


async def test_batch_returns_found_customers_and_lists_the_rest(
    engine: AsyncEngine,
    redis: Redis,
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    reader: dict[str, str],
) -> None:
    cached, stored = Customer("c-cached", NOW), Customer("c-stored", NOW)
    await seed_database(engine, [cached, stored])
    await seed_cache(redis, settings.redis_key_prefix, [cached])
    ids = ["c-cached", "ghost", "c-stored", "c-cached"]

    r = await client.post(
        "/v1/customers/segments:batch", json={"customer_ids": ids}, headers=reader
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert [(c["customer_id"], c["source"]) for c in body["customers"]] == [
        ("c-cached", "cache"),
        ("c-stored", "database"),
    ]
    assert body["not_found"] == ["ghost"]


async def test_batch_over_500_ids_is_422_naming_the_limit(
    client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    ids = [f"c-{i}" for i in range(501)]
    r = await client.post(
        "/v1/customers/segments:batch", json={"customer_ids": ids}, headers=reader
    )
    assert r.status_code == 422
    assert "500" in r.json()["detail"]


async def test_body_over_the_limit_is_413_by_length_and_when_streamed(
    client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    big = b'{"customer_ids": ["' + b"x" * 70_000 + b'"]}'

    declared = await client.post(
        "/v1/customers/segments:batch",
        content=big,
        headers={**reader, "Content-Type": "application/json"},
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = await client.post(
        "/v1/customers/segments:batch",
        content=chunks(),
        headers={**reader, "Content-Type": "application/json"},
    )
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "body_too_large"
    assert "content-length" not in streamed.request.headers


async def test_history_pages_newest_first_by_cursor(
    engine: AsyncEngine, client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    segments = ["prospect", "new", "active", "at_risk", "churned"]
    changes = [
        Change("c-h", "lifecycle", prev, seg, NOW + timedelta(minutes=i), sequence=i + 1)
        for i, (prev, seg) in enumerate(zip([None, *segments], segments, strict=False))
    ]
    await seed_history(engine, [*changes, Change("other", "lifecycle", None, "new", NOW)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/customers/c-h/history", params=params, headers=reader)
        assert r.status_code == 200, r.text
        seen += [item["to_segment"] for item in r.json()["items"]]
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == segments[::-1]
    assert pages == 3


async def test_history_shows_the_exit_from_a_removed_dimension(
    engine: AsyncEngine, client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    entered = Change("c-x", "engagement", None, "engaged", NOW - timedelta(days=1))
    left = Change("c-x", "engagement", "engaged", None, NOW, sequence=2)
    await seed_history(engine, [entered, left])

    r = await client.get("/v1/customers/c-x/history", headers=reader)

    assert r.status_code == 200, r.text
    assert [(i["from_segment"], i["to_segment"]) for i in r.json()["items"]] == [
        ("engaged", None),
        (None, "engaged"),
    ]


async def test_history_errors(
    engine: AsyncEngine, client: httpx.AsyncClient, reader: dict[str, str]
) -> None:
    await seed_database(engine, [Customer("quiet", NOW)])
    unknown = await client.get("/v1/customers/nobody/history", headers=reader)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "customer_not_found"
    quiet = await client.get("/v1/customers/quiet/history", headers=reader)
    assert quiet.status_code == 200
    assert quiet.json() == {"customer_id": "quiet", "items": [], "next_cursor": None}
    bad = await client.get("/v1/customers/quiet/history?cursor=bm9wZQ", headers=reader)
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_cursor"


async def test_redis_down_answers_from_postgres_within_a_bound(
    engine: AsyncEngine, settings: ConnectionSettings, reader: dict[str, str]
) -> None:
    await seed_database(engine, [Customer("c-1", NOW)])
    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with running_api(dead) as (_, client):
        for _ in range(5):
            started = time.perf_counter()
            r = await client.get("/v1/customers/c-1/segments", headers=reader)
            assert time.perf_counter() - started < 1.0
            assert r.status_code == 200, r.text
            assert r.json()["source"] == "database"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        states = {c["component"]: c["status"] for c in ready.json()["components"]}
        assert states["redis"] == "failing"
        assert states["postgres"] == "ok"


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers: a Redis that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_hanging_redis_costs_at_most_the_cache_timeout(
    engine: AsyncEngine, settings: ConnectionSettings, reader: dict[str, str], silent_server: int
) -> None:
    await seed_database(engine, [Customer("c-1", NOW)])
    hung = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{silent_server}/0"})
    async with running_api(hung, cache_timeout_ms=50, cache_retry_after_ms=0) as (_, client):
        await client.get("/v1/customers/c-1/segments", headers=reader)  # warm the pools
        started = time.perf_counter()
        r = await client.get("/v1/customers/c-1/segments", headers=reader)
        elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "database"
    assert 0.05 <= elapsed < 0.5
