"""Reachability checks for the components every service depends on."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.kafka import make_admin
from shared.security import PLAINTEXT, KafkaSecurity

Report = dict[str, object]


async def _timed(name: str, probe: asyncio.Future[object] | object, limit_seconds: float) -> Report:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout=limit_seconds)  # type: ignore[arg-type]
    except Exception as exc:  # any failure means "not reachable"; the reason is reported
        return {"component": name, "status": "failing", "error": f"{type(exc).__name__}: {exc}"}
    return {
        "component": name,
        "status": "ok",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }


async def check_postgres(engine: AsyncEngine, limit_seconds: float = 2.0) -> Report:
    """SELECT 1 through the service's own pool."""

    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await _timed("postgres", probe(), limit_seconds)


async def check_redis(redis: Redis, limit_seconds: float = 1.0) -> Report:
    """PING."""
    return await _timed("redis", redis.ping(), limit_seconds)


async def check_kafka(
    bootstrap: str, limit_seconds: float = 3.0, *, security: KafkaSecurity = PLAINTEXT
) -> Report:
    """Fetch cluster metadata with a short-lived admin client."""

    async def probe() -> None:
        admin = make_admin(bootstrap, security=security, request_timeout_ms=3000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    return await _timed("kafka", probe(), limit_seconds)


def overall(components: list[Report]) -> str:
    """ok when all are ok, failing when any is failing, degraded otherwise."""
    states = {c.get("status") for c in components}
    if "failing" in states:
        return "failing"
    if "degraded" in states:
        return "degraded"
    return "ok"
