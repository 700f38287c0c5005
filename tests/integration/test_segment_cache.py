"""The segment cache's scripts against real Redis, in the orders that races produce: a mark
before commit, writes after it, late ones of either, a rolled-back evaluation, erasure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import msgspec
import pytest
from redis.asyncio import Redis

from shared.segment_cache import ERASED_VERSION, CachedCustomer, SegmentCache, customer_key
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import Customer

pytestmark = pytest.mark.integration

CID = "c-race"


@pytest.fixture
def cache(redis: Redis, settings: ConnectionSettings) -> SegmentCache:
    return SegmentCache(redis, settings.redis_key_prefix)


def doc(version: int) -> CachedCustomer:
    return msgspec.structs.replace(
        Customer(CID, datetime(2026, 6, 1, tzinfo=UTC)).cached(), version=version
    )


async def fields(redis: Redis, settings: ConnectionSettings) -> dict[bytes, bytes]:
    found = await redis.hgetall(customer_key(settings.redis_key_prefix, CID))
    return cast(dict[bytes, bytes], found)  # the client does not decode responses


async def test_a_mark_drops_the_document_and_its_own_write_restores_it(
    cache: SegmentCache, redis: Redis, settings: ConnectionSettings
) -> None:
    assert await cache.put_many([doc(1)]) == 1
    assert await cache.mark_stale([(CID, 2)]) == 1
    assert await cache.get(CID) is None
    assert await cache.put_many([doc(2)]) == 1
    assert (await cache.get(CID)) == doc(2)
    assert b"dirty" not in await fields(redis, settings)


async def test_a_late_older_write_after_a_newer_mark_is_refused_and_keeps_the_mark(
    cache: SegmentCache, redis: Redis, settings: ConnectionSettings
) -> None:
    # Evaluation 2 committed, its write delayed; evaluation 3 marks before its commit.
    assert await cache.put_many([doc(1)]) == 1
    assert await cache.mark_stale([(CID, 3)]) == 1
    assert await cache.put_many([doc(2)]) == 0
    assert await cache.get(CID) is None
    assert (await fields(redis, settings))[b"dirty"] == b"3"
    # A lower mark arriving late does not lower it either.
    await cache.mark_stale([(CID, 2)])
    assert (await fields(redis, settings))[b"dirty"] == b"3"
    assert await cache.put_many([doc(3)]) == 1
    assert (await cache.get(CID)) == doc(3)


async def test_a_rolled_back_evaluation_leaves_a_miss_until_the_same_version_is_written(
    cache: SegmentCache,
) -> None:
    assert await cache.put_many([doc(4)]) == 1
    await cache.mark_stale([(CID, 5)])  # ... and the transaction rolls back
    assert await cache.get(CID) is None
    await cache.mark_stale([(CID, 5)])  # evaluated again, under the same version
    assert await cache.put_many([doc(5)]) == 1
    assert (await cache.get(CID)) == doc(5)


async def test_a_mark_that_arrives_after_its_own_write_keeps_the_document(
    cache: SegmentCache, redis: Redis, settings: ConnectionSettings
) -> None:
    # The mark timed out at the client but ran late; or a repair of a version written since.
    assert await cache.put_many([doc(6)]) == 1
    assert await cache.mark_stale([(CID, 6)]) == 0
    assert (await cache.get(CID)) == doc(6)
    assert b"dirty" not in await fields(redis, settings)


async def test_the_erasure_marker_refuses_documents_and_ignores_marks(
    cache: SegmentCache, redis: Redis, settings: ConnectionSettings
) -> None:
    assert await cache.put_many([doc(1)]) == 1
    await cache.forget(CID, hold_seconds=60)
    await cache.mark_stale([(CID, 2)])
    assert await cache.put_many([doc(2)]) == 0
    assert await cache.get(CID) is None
    stored = await fields(redis, settings)
    assert stored == {b"v": str(ERASED_VERSION).encode()}
    assert 0 < await redis.ttl(customer_key(settings.redis_key_prefix, CID)) <= 60


async def test_a_flushed_redis_takes_the_next_write(cache: SegmentCache, redis: Redis) -> None:
    await cache.mark_stale([(CID, 3)])
    await cache.delete(CID)  # as after FLUSHALL, for this key alone
    assert await cache.get(CID) is None
    assert await cache.put_many([doc(2)]) == 1
    assert (await cache.get(CID)) == doc(2)
