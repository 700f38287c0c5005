"""/healthz, /readyz (ok, degraded on a segmenter backlog, failing when Kafka is unreachable)
and /metrics labelled by route template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import ConnectionSettings
from tests.integration.test_api_support import bearer, make_key, running_api, unit_of_work

pytestmark = pytest.mark.integration


async def queue(engine: AsyncEngine, *due: datetime) -> None:
    async with unit_of_work(engine) as conn:
        await conn.executemany(
            "INSERT INTO segmentation_queue (customer_id, due_at) VALUES ($1, $2)",
            [(f"q{i}", at) for i, at in enumerate(due)],
        )


async def test_ready_and_alive_on_an_idle_stack(settings: ConnectionSettings) -> None:
    async with running_api(settings) as (_, client):
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok"
    components = {c["component"]: c for c in body["components"]}
    assert set(components) == {
        "postgres",
        "redis",
        "kafka",
        "segmenter_backlog",
        "ingest_freshness",
    }
    assert components["segmenter_backlog"]["due_rows"] == 0
    assert "seconds_since_last_batch" not in components["ingest_freshness"]


async def test_an_old_backlog_makes_readiness_degraded(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    await queue(engine, now - timedelta(minutes=5), now - timedelta(seconds=1), now + timedelta(1))
    async with running_api(settings, ready_backlog_seconds=60) as (_, client):
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    backlog = next(c for c in ready.json()["components"] if c["component"] == "segmenter_backlog")
    assert backlog["status"] == "degraded"
    assert backlog["due_rows"] == 2
    assert 300 <= backlog["oldest_due_seconds"] < 330


async def test_too_many_due_rows_make_readiness_degraded(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    await queue(engine, now, now, now)
    async with running_api(settings, ready_backlog_rows=2) as (_, client):
        assert (await client.get("/readyz")).json()["status"] == "degraded"
    async with running_api(settings, ready_backlog_rows=3) as (_, client):
        assert (await client.get("/readyz")).json()["status"] == "ok"


async def test_unreachable_kafka_makes_readiness_failing(settings: ConnectionSettings) -> None:
    no_kafka = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    async with running_api(no_kafka) as (_, client):
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "failing"
    kafka = next(c for c in ready.json()["components"] if c["component"] == "kafka")
    assert kafka["status"] == "failing"
    assert kafka["error"]


async def test_metrics_are_labelled_by_route_template(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    key = bearer(await make_key(engine, "segments:read"))
    async with running_api(settings) as (_, client):
        await client.get("/v1/customers/metric-probe-1/segments", headers=key)
        await client.get("/v1/customers/metric-probe-2/segments")
        await client.get("/no/such/path-metric-probe")
        metrics = (await client.get("/metrics")).text
    assert "metric-probe" not in metrics
    route = 'route="/v1/customers/{customer_id}/segments"'
    assert f'streamseg_api_requests_total{{method="GET",{route},status="404"}}' in metrics
    assert f'streamseg_api_requests_total{{method="GET",{route},status="401"}}' in metrics
    assert f'streamseg_api_request_duration_seconds_bucket{{le="0.005",method="GET",{route}}}' in (
        metrics
    )
    assert 'route="unmatched"' in metrics
