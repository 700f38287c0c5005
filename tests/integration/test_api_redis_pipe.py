"""The API's shared Redis connection (services/api/redis_pipe.py) against real Redis: replies
reach their own callers however many share it, a caller that gives up does not shift them,
and a refused, hanging or closed connection fails in the ways the cache reader expects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.api.redis_pipe import RedisPipe
from shared.redis import make_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(stack_env: dict[str, str]) -> str:
    return stack_env["STREAMSEG_REDIS_URL"]


@pytest.fixture
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    """A redis-py client to write with; this test's keys are deleted afterwards. (No database:
    these tests need none.)"""
    client = make_redis(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=redis_prefix + "*", count=10_000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    made = RedisPipe.from_url(redis_url, 1.0)
    assert made is not None
    yield made
    made.close()


async def test_concurrent_callers_get_their_own_replies(
    pipe: RedisPipe, redis: Redis, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}k{i}".encode() for i in range(300)]
    for i, key in enumerate(keys[::2]):
        await redis.hset(key, "doc", f"value {i} " + "x" * (i * 7))  # some span several reads

    replies = await asyncio.gather(*(pipe.hget(key, b"doc") for key in keys))

    expected = [f"value {i} ".encode() + b"x" * (i * 7) for i in range(150)]
    assert replies[::2] == expected
    assert replies[1::2] == [None] * 150


async def test_a_caller_that_gives_up_does_not_shift_the_replies(
    pipe: RedisPipe, redis: Redis, redis_prefix: str
) -> None:
    await redis.hset(f"{redis_prefix}a", "doc", "A")
    await redis.hset(f"{redis_prefix}b", "doc", "B")
    await pipe.hget(b"warm", b"up")  # connected, so the next command is written at once

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await pipe.hget(f"{redis_prefix}a".encode(), b"doc")

    assert await pipe.hget(f"{redis_prefix}b".encode(), b"doc") == b"B"


async def test_a_wrong_type_is_a_redis_error(
    pipe: RedisPipe, redis: Redis, redis_prefix: str
) -> None:
    await redis.set(f"{redis_prefix}plain", "1")
    with pytest.raises(ResponseError):
        await pipe.hget(f"{redis_prefix}plain".encode(), b"doc")
    await redis.hset(f"{redis_prefix}h", "doc", "ok")
    assert await pipe.hget(f"{redis_prefix}h".encode(), b"doc") == b"ok"


async def test_the_database_of_the_url_is_selected(redis_url: str, redis_prefix: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/5"
    other = make_redis(url)
    pipe = RedisPipe.from_url(url, 1.0)
    assert pipe is not None
    key = f"{redis_prefix}db5"
    try:
        await other.hset(key, "doc", "in db 5")
        assert await pipe.hget(key.encode(), b"doc") == b"in db 5"
    finally:
        await other.delete(key)
        await other.aclose()
        pipe.close()


async def test_a_closed_connection_is_opened_again(
    pipe: RedisPipe, redis: Redis, redis_prefix: str
) -> None:
    await redis.hset(f"{redis_prefix}k", "doc", "v")
    assert await pipe.hget(f"{redis_prefix}k".encode(), b"doc") == b"v"
    pipe.close()
    pipe.close()
    assert await pipe.hget(f"{redis_prefix}k".encode(), b"doc") == b"v"


async def test_a_refused_connection_is_a_connection_error() -> None:
    pipe = RedisPipe.from_url("redis://127.0.0.1:1/0", 1.0)
    assert pipe is not None
    with pytest.raises(ConnectionError):
        await pipe.hget(b"k", b"doc")


@dataclass
class SilentServer:
    """A TCP port that accepts connections and never answers: a Redis that hangs."""

    port: int
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append((reader, writer))

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield SilentServer(int(server.sockets[0].getsockname()[1]), accepted)
    for _, writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_stuck_connection_is_dropped_and_opened_again(silent_server: SilentServer) -> None:
    pipe = RedisPipe.from_url(f"redis://127.0.0.1:{silent_server.port}/0", 1.0, 0.2)
    assert pipe is not None
    for timeout in (0.3, 0.1):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(timeout):
                await pipe.hget(b"k", b"doc")
    # The second call found the first one's reply 0.3 s late: it dropped that connection
    # (the server reads its end) and asked on a new one.
    assert len(silent_server.accepted) == 2
    first, _ = silent_server.accepted[0]
    async with asyncio.timeout(1):
        assert (await first.read()).count(b"HGET") == 1
    pipe.close()


def test_urls_it_does_not_speak_are_left_to_redis_py() -> None:
    assert RedisPipe.from_url("rediss://127.0.0.1:6380/0", 1.0) is None
    assert RedisPipe.from_url("redis://127.0.0.1:6379/0?socket_timeout=1", 1.0) is None
    assert RedisPipe.from_url("unix:///tmp/redis.sock?db=2", 1.0) is not None
    assert RedisPipe.from_url("redis://:secret@127.0.0.1:6379/3", 1.0) is not None
