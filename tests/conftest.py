"""Fixtures over the real stack: Kafka, PostgreSQL and Redis from deploy/stack.sh.

The stack is started once per session (or taken from STREAMSEG_* in the environment).
Each test gets its own PostgreSQL schema, Kafka topics and consumer groups, and Redis key
prefix, so tests never see each other's data and can run in any order.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import create_engine
from shared.db.migrate import upgrade
from shared.kafka import TopicSpec, delete_topics, ensure_topics
from shared.redis import make_redis
from shared.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = ("STREAMSEG_DATABASE_URL", "STREAMSEG_REDIS_URL", "STREAMSEG_KAFKA_BOOTSTRAP")


def _stack_env() -> dict[str, str]:
    if all(os.environ.get(n) for n in ENV_NAMES):
        return {n: os.environ[n] for n in ENV_NAMES}
    subprocess.run(["bash", str(ROOT / "deploy" / "stack.sh"), "up"], check=True)
    out = subprocess.run(
        ["bash", str(ROOT / "deploy" / "stack.sh"), "env"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """Connection settings of the running stack, as environment variables."""
    return _stack_env()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db_schema(stack_env: dict[str, str]) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema with every migration applied; dropped afterwards."""
    schema = unique("t")
    engine = create_engine(stack_env["STREAMSEG_DATABASE_URL"], schema)
    try:
        await upgrade(engine, schema)
        yield schema
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


@pytest.fixture
def redis_prefix() -> str:
    return unique("t") + ":"


@pytest.fixture
def settings(stack_env: dict[str, str], db_schema: str, redis_prefix: str) -> ConnectionSettings:
    """Connection settings scoped to this test's schema and Redis prefix."""
    return ConnectionSettings(
        database_url=stack_env["STREAMSEG_DATABASE_URL"],
        redis_url=stack_env["STREAMSEG_REDIS_URL"],
        kafka_bootstrap=stack_env["STREAMSEG_KAFKA_BOOTSTRAP"],
        database_schema=db_schema,
        redis_key_prefix=redis_prefix,
    )


@pytest.fixture
def service_env(settings: ConnectionSettings) -> dict[str, str]:
    """Environment for running a service as a subprocess against this test's data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    env.update(
        STREAMSEG_DATABASE_URL=settings.database_url,
        STREAMSEG_REDIS_URL=settings.redis_url,
        STREAMSEG_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        STREAMSEG_DATABASE_SCHEMA=settings.database_schema,
        STREAMSEG_REDIS_KEY_PREFIX=settings.redis_key_prefix,
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
async def engine(settings: ConnectionSettings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings.database_url, settings.database_schema)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def redis(settings: ConnectionSettings) -> AsyncIterator[Redis]:
    client = make_redis(settings.redis_url)
    try:
        yield client
    finally:
        keys = [
            k async for k in client.scan_iter(match=settings.redis_key_prefix + "*", count=1000)
        ]
        if keys:
            await client.delete(*keys)
        await client.aclose()


MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_topic(stack_env: dict[str, str]) -> AsyncIterator[MakeTopic]:
    """Factory: `await make_topic("orders", partitions=4)` creates a topic only this test uses."""
    bootstrap = stack_env["STREAMSEG_KAFKA_BOOTSTRAP"]
    created: list[str] = []

    async def make(prefix: str = "t", partitions: int = 1) -> str:
        name = unique(prefix)
        await ensure_topics(bootstrap, [TopicSpec(name, partitions)])
        created.append(name)
        return name

    yield make
    if created:
        await delete_topics(bootstrap, created)


async def eventually(
    condition: Callable[[], Awaitable[bool]],
    *,
    within_seconds: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> None:
    """Poll `condition` until it holds or `timeout` passes; never a bare sleep."""
    deadline = asyncio.get_running_loop().time() + within_seconds
    while True:
        if await condition():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{message} did not hold within {within_seconds}s")
        await asyncio.sleep(interval)


@pytest.fixture
def group_id() -> str:
    return unique("g")
