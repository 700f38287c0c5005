"""create_app(): the FastAPI application and the resources its lifespan holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.db.engine import create_engine
from shared.db.migrate import require_current
from shared.health import check_kafka, check_postgres, check_redis, overall
from shared.redis import make_redis
from shared.settings import ConnectionSettings


def create_app(conn: ConnectionSettings) -> FastAPI:
    """Build the app; PostgreSQL, Redis and the schema check are set up in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(conn.database_url, conn.database_schema, application_name="api")
        await require_current(engine, conn.database_schema)
        redis = make_redis(conn.redis_url)
        app.state.engine, app.state.redis = engine, redis
        try:
            yield
        finally:
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="StreamSeg",
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, object]:
        """PostgreSQL, Redis and Kafka are reachable."""
        parts = list(
            await asyncio.gather(
                check_postgres(app.state.engine),
                check_redis(app.state.redis),
                check_kafka(conn.kafka_bootstrap),
            )
        )
        status = overall(parts)
        if status == "failing":
            response.status_code = 503
        return {"status": status, "components": parts}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
