"""Readiness: reachability of PostgreSQL, Redis and Kafka, and how far behind the segmenter is."""

from __future__ import annotations

import asyncio

from services.api.database import Database
from services.api.errors import ApiError
from services.api.health import repository
from services.api.health.schemas import ComponentReport, Readiness, Status
from services.api.resources import Resources
from shared.health import check_kafka, check_postgres, check_redis


async def backlog_reports(db: Database, max_seconds: float, max_rows: int) -> list[ComponentReport]:
    try:
        async with db.read() as conn:
            due_rows, oldest = await repository.segmenter_backlog(conn)
            since_ingest = await repository.seconds_since_ingest(conn)
    except ApiError as exc:
        return [ComponentReport(component="segmenter_backlog", status="failing", error=exc.detail)]
    behind = due_rows > max_rows or (oldest is not None and oldest > max_seconds)
    return [
        ComponentReport(
            component="segmenter_backlog",
            status="degraded" if behind else "ok",
            due_rows=due_rows,
            oldest_due_seconds=None if oldest is None else round(oldest, 3),
        ),
        # Only reported: with no traffic nothing is ingested, and that is not a fault.
        ComponentReport(
            component="ingest_freshness",
            status="ok",
            seconds_since_last_batch=None if since_ingest is None else round(since_ingest, 3),
        ),
    ]


async def readiness(resources: Resources) -> Readiness:
    settings = resources.settings
    probes, backlog = await asyncio.gather(
        asyncio.gather(
            check_postgres(resources.engine),
            check_redis(resources.redis),
            check_kafka(resources.conn.kafka_bootstrap, security=resources.conn.kafka_security()),
        ),
        backlog_reports(resources.db, settings.ready_backlog_seconds, settings.ready_backlog_rows),
    )
    components = [ComponentReport.model_validate(p) for p in probes] + backlog
    states = {c.status for c in components}
    status: Status = (
        "failing" if "failing" in states else "degraded" if "degraded" in states else "ok"
    )
    return Readiness(status=status, components=components)
