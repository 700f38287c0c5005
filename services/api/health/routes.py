"""/healthz, /readyz and /metrics: unauthenticated, for supervisors and Prometheus."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.api.deps import ResourcesDep
from services.api.health import service
from services.api.health.schemas import Liveness, Readiness
from services.api.workers import METRICS_DIR

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """The process is alive."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "A component is unreachable"}},
)
async def readyz(resources: ResourcesDep, response: Response) -> Readiness:
    """Each component's state; 503 when one is unreachable."""
    report = await service.readiness(resources)
    if report.status == "failing":
        response.status_code = 503
    return report


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    """This process's metrics; with several workers, all of theirs added up (workers.py)."""
    if METRICS_DIR not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
