"""create_app(): the FastAPI application and the resources its lifespan holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from services.api.auth.routes import router as admin_router
from services.api.changes.routes import router as changes_router
from services.api.customers.fast_path import SegmentsFastPath
from services.api.customers.routes import get_customer_segments
from services.api.customers.routes import router as customers_router
from services.api.definitions.routes import router as definitions_router
from services.api.deps import SECURITY, SECURITY_SCHEMES
from services.api.erasure.routes import router as erasure_router
from services.api.errors import install_error_handlers
from services.api.events.routes import router as events_router
from services.api.exports.routes import router as exports_router
from services.api.health.routes import router as health_router
from services.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from services.api.resources import StreamControl, open_resources
from services.api.segments.routes import router as segments_router
from services.api.settings import ApiSettings
from services.api.stats.routes import router as stats_router
from services.api.traits.routes import router as traits_router
from services.api.web import routes as web
from services.api.webhooks.routes import router as webhooks_router
from shared.settings import ConnectionSettings

DESCRIPTION = """\
Customers' current segments for storefronts, their traits (written as customer events through
Kafka), segment definitions and sizes, transition
statistics, the change stream for tools that do not speak Kafka, and the definitions'
lifecycle: validate, preview, activate, compare and roll back.

Every `/v1` endpoint needs an API key (`Authorization: Bearer <key>` or `X-API-Key`) with the
scope it names; errors are `{"error": code, "detail": text}`. See docs/api.md.
"""


def create_app(conn: ConnectionSettings, settings: ApiSettings | None = None) -> FastAPI:
    """Build the app; PostgreSQL, Redis and the schema check are set up in the lifespan."""
    api_settings = settings if settings is not None else ApiSettings()
    streams = StreamControl()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(conn, api_settings, streams) as resources:
            app.state.resources = resources
            yield

    app = FastAPI(
        title="StreamSeg",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus (/metrics). FastAPI's OpenTelemetry hooks, unconfigured, still
        # look the providers up on every request, which costs more than the cached read itself.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Served from the package's own assets instead of a CDN (services/api/web).
        docs_url=None,
        redoc_url=None,
    )
    app.state.streams = streams
    install_error_handlers(app)
    for router in (
        customers_router,
        traits_router,
        events_router,
        segments_router,
        exports_router,
        definitions_router,
        stats_router,
        changes_router,
        erasure_router,
        webhooks_router,
        admin_router,
        health_router,
    ):
        app.include_router(router)
    web.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if api_settings.fast_path:
        # Innermost of ours: the body limit and the metrics apply to its answers too.
        route = _route_of(customers_router, get_customer_segments)
        app.add_middleware(SegmentsFastPath, route=route)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=api_settings.max_body_bytes,
        path_limits={events_router.prefix: api_settings.events_max_body_bytes},
    )
    # Added last, so outermost: it also times the requests the body limit turns away.
    app.add_middleware(MetricsMiddleware)
    return app


def _route_of(router: APIRouter, endpoint: object) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus the key schemes, which every /v1 operation requires (see
    deps.py for why they are not declared as dependencies)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, item in schema["paths"].items():
            if path.startswith("/v1/"):
                for operation in item.values():
                    operation["security"] = SECURITY
        app.openapi_schema = schema
    return app.openapi_schema
