"""The raw ASGI answer to GET /v1/customers/{id}/segments (services/api/customers/fast_path.py)
against FastAPI's route: the same requests, sent to the app with and without it, get the same
status, headers and body, write the same audit entries and count the same metrics."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import ConnectionSettings
from tests.integration.test_api_support import (
    Customer,
    audit_rows,
    bearer,
    make_key,
    running_api,
    seed_cache,
    seed_database,
)

pytestmark = pytest.mark.integration

# Microseconds in every timestamp, and no next change for one customer, so that any
# difference in how either side formats them shows.
NOW = datetime.now(UTC)
CACHED = Customer("c-cached", NOW - timedelta(minutes=3), next_change_at=NOW + timedelta(days=2))
STORED = Customer("shop:42@x", NOW - timedelta(hours=1, microseconds=7))
METRICS = (
    "streamseg_api_requests_total",
    "streamseg_api_customer_reads_total",
    "streamseg_api_cache_failures_total",
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _normalized(body: bytes) -> bytes:
    """The body without what depends on the moment of the request: staleness, and the request
    time that a database answer gives as `aggregates.as_of`."""
    body = re.sub(rb'"staleness_seconds":[0-9.eE+-]+', b'"staleness_seconds":0', body)
    if b'"source":"database"' in body:
        body = re.sub(rb'"as_of":"[^"]+"', b'"as_of":"now"', body)
    return body


def _answer(status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> Answer:
    normalized = _normalized(body)
    if normalized == body:
        return Answer(status, raw_headers, body)
    # The length follows the staleness digits: checked here, then compared normalized.
    assert (b"content-length", b"%d" % len(body)) in raw_headers
    length = b"%d" % len(normalized)
    headers = [(k, length if k == b"content-length" else v) for k, v in raw_headers]
    return Answer(status, headers, normalized)


def _metrics() -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
    found: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in METRICS:
                found[(sample.name, tuple(sorted(sample.labels.items())))] += int(sample.value)
    return found


async def _exchange(
    conn: ConnectionSettings,
    engine: AsyncEngine,
    requests: list[tuple[str, str, dict[str, str]]],
    **settings: Any,
) -> tuple[list[Answer], Counter[tuple[Any, ...]], Counter[tuple[str, tuple[Any, ...]]]]:
    """Each request's answer, and the audit entries and metric counts the requests added."""
    audited_before = len(await audit_rows(engine))
    counted_before = _metrics()
    answers = []
    async with running_api(conn, **settings) as (_, client):
        for method, path, headers in requests:
            r = await client.request(method, path, headers=headers)
            answers.append(_answer(r.status_code, r.headers.raw, r.content))
    # Leaving the app flushes the audit buffer.
    audited = Counter(
        (r["actor"], r["key_id"], r["action"], r["customer_id"])
        for r in (await audit_rows(engine))[audited_before:]
    )
    return answers, audited, _metrics() - counted_before


async def _compare(
    conn: ConnectionSettings,
    engine: AsyncEngine,
    requests: list[tuple[str, str, dict[str, str]]],
    **settings: Any,
) -> list[Answer]:
    fast, fast_audit, fast_metrics = await _exchange(
        conn, engine, requests, fast_path=True, **settings
    )
    plain, plain_audit, plain_metrics = await _exchange(
        conn, engine, requests, fast_path=False, **settings
    )
    for request, f, p in zip(requests, fast, plain, strict=True):
        assert f == p, request
    assert fast_audit == plain_audit
    assert fast_metrics == plain_metrics
    return fast


async def test_fast_path_answers_as_the_fastapi_route_does(
    settings: ConnectionSettings, engine: AsyncEngine, redis: Redis
) -> None:
    await seed_database(engine, [CACHED, STORED])
    await seed_cache(redis, settings.redis_key_prefix, [CACHED])
    reader = await make_key(engine, "segments:read")
    admin = await make_key(engine, "admin")
    forged = reader[:-4] + ("aaaa" if not reader.endswith("aaaa") else "bbbb")
    read = bearer(reader)
    requests = [
        ("GET", "/v1/customers/c-cached/segments", read),
        ("GET", "/v1/customers/c-cached/segments", {"X-API-Key": reader}),
        ("GET", "/v1/customers/c-cached/segments?unused=1", read),
        ("GET", "/v1/customers/shop:42@x/segments", read),
        ("GET", "/v1/customers/shop%3A42%40x/segments", read),
        ("GET", "/v1/customers/nobody/segments", read),
        ("GET", "/v1/customers/has space/segments", read),
        ("GET", "/v1/customers/" + "a" * 129 + "/segments", read),
        ("GET", "/v1/customers/%C3%A9/segments", read),
        ("GET", "/v1/customers/abc%0A/segments", read),
        ("GET", "/v1/customers/has space/segments", {}),
        ("GET", "/v1/customers/c-cached/segments", {}),
        ("GET", "/v1/customers/c-cached/segments", bearer(forged)),
        ("GET", "/v1/customers/c-cached/segments", {"X-API-Key": "hunter2"}),
        ("GET", "/v1/customers/c-cached/segments", {"Authorization": "Basic dTpw"}),
        ("GET", "/v1/customers/c-cached/segments", {"Authorization": "Bearer  "}),
        ("GET", "/v1/customers/c-cached/segments", bearer(admin)),
        ("GET", "/v1/customers/c-cached/segments/", read),
        ("HEAD", "/v1/customers/c-cached/segments", read),
        ("POST", "/v1/customers/c-cached/segments", read),
    ]

    answers = await _compare(settings, engine, requests)

    statuses = [a.status for a in answers]
    assert statuses[:6] == [200, 200, 200, 200, 200, 404]
    assert statuses[6:11] == [422, 422, 422, 422, 401]
    assert statuses[11:17] == [401, 401, 401, 401, 401, 403]
    assert b'"source":"cache"' in answers[0].body
    assert b'"source":"database"' in answers[3].body


async def test_fast_path_answers_as_the_fastapi_route_does_with_redis_down(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    await seed_database(engine, [CACHED])
    read = bearer(await make_key(engine, "segments:read"))
    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    requests = [
        ("GET", "/v1/customers/c-cached/segments", read),
        ("GET", "/v1/customers/c-cached/segments", read),
        ("GET", "/v1/customers/nobody/segments", read),
    ]

    # Long enough for the refused connection to surface as such (not as a time-out), and for
    # it to keep Redis skipped for the rest of the test: the same failure count on both sides.
    answers = await _compare(
        dead, engine, requests, cache_timeout_ms=5000, cache_retry_after_ms=600_000
    )

    assert [a.status for a in answers] == [200, 200, 404]
    assert b'"source":"database"' in answers[0].body
