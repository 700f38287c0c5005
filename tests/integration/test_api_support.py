"""Helpers for the API tests (this module holds no test): run the app, make keys, seed rows.

Data is written as the segmenter writes it, straight into this test's schema and Redis key
prefix; the app runs in-process over ASGI with its real lifespan, or as a uvicorn process.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import IO, Any

import asyncpg
import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.auth import repository as auth_repository
from services.api.auth.keys import hash_key, new_key
from services.api.settings import ApiSettings
from shared.db.engine import driver_connection
from shared.definitions import repository as store
from shared.segment_cache import CachedAggregates, CachedCustomer, CachedSegment, SegmentCache
from shared.segmentation import default_definitions
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually, free_port

DEFAULT_SEGMENTS = {
    "lifecycle": "active",
    "value_tier": "high",
    "rfm": "loyal",
    "engagement": "engaged",
}


@asynccontextmanager
async def running_api(
    conn: ConnectionSettings, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client that talks to it over ASGI."""
    app = create_app(conn, ApiSettings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield app, client


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with engine.connect() as sa_conn:
        conn = await driver_connection(sa_conn)
        async with conn.transaction():
            yield conn


async def make_key(engine: AsyncEngine, *scopes: str, name: str = "test") -> str:
    """A new API key with these scopes; returns the key itself."""
    key_id, key = new_key()
    async with unit_of_work(engine) as conn:
        await auth_repository.insert_key(conn, key_id, name, hash_key(key), list(scopes))
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Customer:
    customer_id: str
    evaluated_at: datetime
    segments: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEGMENTS))
    definition_version: int = 1
    order_count: int = 3
    net_spend: Decimal = Decimal("250.5000")
    next_change_at: datetime | None = None

    def since(self) -> datetime:
        return self.evaluated_at - timedelta(days=2)

    def reason(self, dimension: str) -> str:
        return f"{dimension} rule for {self.customer_id}"

    def cached(self) -> CachedCustomer:
        return CachedCustomer(
            customer_id=self.customer_id,
            version=1,
            definition_version=self.definition_version,
            evaluated_at=self.evaluated_at,
            next_change_at=self.next_change_at,
            segments={
                dim: CachedSegment(segment=seg, since=self.since(), reason=self.reason(dim))
                for dim, seg in self.segments.items()
            },
            aggregates=CachedAggregates(
                order_count=self.order_count,
                net_spend=self.net_spend,
                spend_365d=self.net_spend,
                orders_365d=self.order_count,
                first_order_at=self.evaluated_at - timedelta(days=100),
                last_order_at=self.evaluated_at - timedelta(days=3),
                interaction_count=10,
                interactions_30d=4,
                last_interaction_at=self.evaluated_at - timedelta(hours=1),
                open_cart_at=None,
            ),
        )


async def seed_database(engine: AsyncEngine, customers: Sequence[Customer]) -> None:
    """Evaluations, current segments and aggregates rows, as the segmenter and ingest write."""
    async with unit_of_work(engine) as conn:
        for c in customers:
            await conn.execute(
                "INSERT INTO customer_evaluations (customer_id, version, definition_version,"
                " evaluated_at, next_change_at) VALUES ($1, 1, $2, $3, $4)",
                c.customer_id,
                c.definition_version,
                c.evaluated_at,
                c.next_change_at,
            )
            for dim, seg in c.segments.items():
                await conn.execute(
                    "INSERT INTO customer_segments (customer_id, dimension, segment, since,"
                    " reason, definition_version, evaluated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    c.customer_id,
                    dim,
                    seg,
                    c.since(),
                    c.reason(dim),
                    c.definition_version,
                    c.evaluated_at,
                )
            await conn.execute(
                "INSERT INTO customer_aggregates (customer_id, order_count, net_spend,"
                " interaction_count) VALUES ($1, $2, $3, 10)",
                c.customer_id,
                c.order_count,
                c.net_spend,
            )


async def seed_cache(redis: Redis, prefix: str, customers: Sequence[Customer]) -> None:
    await SegmentCache(redis, prefix).put_many([c.cached() for c in customers])


async def seed_definitions(engine: AsyncEngine) -> int:
    """Store the default definitions as the segmenter does at start; returns the version."""
    text = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
    async with unit_of_work(engine) as conn:
        stored, _ = await store.seed(conn, text, default_definitions().content_hash, "test")
    return stored.version


@dataclass
class Change:
    customer_id: str
    dimension: str
    from_segment: str | None
    to_segment: str
    evaluated_at: datetime
    sequence: int = 1
    caused_by_event_at: datetime | None = None


async def seed_history(engine: AsyncEngine, changes: Sequence[Change]) -> list[int]:
    """History rows in the given order; returns their ids."""
    ids = []
    async with unit_of_work(engine) as conn:
        for c in changes:
            ids.append(
                await conn.fetchval(
                    """
                    INSERT INTO segment_history (change_id, customer_id, dimension,
                        from_segment, to_segment, reason, cause, definition_version,
                        caused_by_event_at, evaluated_at, sequence)
                    VALUES ($1, $2, $3, $4, $5, $6, 'event', 1, $7, $8, $9)
                    RETURNING id
                    """,
                    uuid.uuid4(),
                    c.customer_id,
                    c.dimension,
                    c.from_segment,
                    c.to_segment,
                    f"moved to {c.to_segment}",
                    c.caused_by_event_at,
                    c.evaluated_at,
                    c.sequence,
                )
            )
    return ids


async def audit_rows(engine: AsyncEngine, action: str | None = None) -> list[asyncpg.Record]:
    async with unit_of_work(engine) as conn:
        rows = await conn.fetch(
            "SELECT * FROM audit_log WHERE $1::text IS NULL OR action = $1 ORDER BY id", action
        )
    return list(rows)


@dataclass
class ApiProcess:
    proc: asyncio.subprocess.Process
    url: str
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode()


@asynccontextmanager
async def api_process(
    service_env: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> AsyncIterator[ApiProcess]:
    """`python -m services.api` on a free port, ready when this yields; killed afterwards.

    Its output goes to a file, not a pipe, so a chatty server can never block on a full pipe.
    """
    port = free_port()
    env = {
        **service_env,
        "STREAMSEG_LOG_JSON": "false",
        "STREAMSEG_API_PORT": str(port),
        **(extra or {}),
    }
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.api", cwd=ROOT, env=env, stdout=log, stderr=log
        )
        api = ApiProcess(proc, f"http://127.0.0.1:{port}", log)
        try:
            async with httpx.AsyncClient(timeout=2) as client:

                async def up() -> bool:
                    assert proc.returncode is None, api.output()
                    try:
                        return (await client.get(f"{api.url}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await eventually(up, within_seconds=30, message="API process serving")
            yield api
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
