"""/v1/customers: segments of one or many customers, and a customer's history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.api.auth.keys import Principal
from services.api.auth.repository import AuditEntry
from services.api.customers import service
from services.api.customers.schemas import (
    BatchRequest,
    BatchResponse,
    CustomerSegments,
    HistoryPage,
)
from services.api.deps import Reader, ResourcesDep
from services.api.errors import error_responses
from services.api.resources import Resources
from shared.events.limits import ID_MAX_LENGTH, ID_PATTERN

router = APIRouter(prefix="/v1/customers", tags=["customers"])

CustomerIdPath = Annotated[
    str,
    Path(
        pattern=ID_PATTERN,
        max_length=ID_MAX_LENGTH,
        description="The customer id of the events",
        examples=["c-1042"],
    ),
]


def _audit(resources: Resources, who: Principal, action: str, customer_id: str) -> None:
    resources.audit.record(
        AuditEntry(datetime.now(UTC), who.actor, who.key_id, action, customer_id)
    )


@router.get(
    "/{customer_id}/segments",
    response_model=CustomerSegments,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_customer_segments(
    customer_id: CustomerIdPath, resources: ResourcesDep, who: Reader
) -> CustomerSegments:
    """A customer's current segment in every dimension, from the cache or the database."""
    return await read_segments(resources, who, customer_id)


async def read_segments(resources: Resources, who: Principal, customer_id: str) -> CustomerSegments:
    """The route's work, shared with its raw ASGI twin (fast_path.py)."""
    now = datetime.now(UTC)
    result = await service.read_customer(
        resources.cache, resources.db, resources.fallback, resources.definitions, customer_id, now
    )
    _audit(resources, who, "customer.segments.read", customer_id)
    return result


@router.post(
    "/segments:batch",
    response_model=BatchResponse,
    responses=error_responses(401, 403, 413, 422, 503),
)
async def batch_customer_segments(
    body: BatchRequest, resources: ResourcesDep, who: Reader
) -> BatchResponse:
    """Segments of up to 500 customers at once; ids without segments are listed apart."""
    now = datetime.now(UTC)
    found = await service.read_customers(
        resources.cache,
        resources.db,
        resources.fallback,
        resources.definitions,
        body.customer_ids,
        now,
    )
    for cid in found:
        _audit(resources, who, "customer.segments.read", cid)
    unknown = [cid for cid in dict.fromkeys(body.customer_ids) if cid not in found]
    return BatchResponse(customers=list(found.values()), not_found=unknown)


@router.get(
    "/{customer_id}/history",
    response_model=HistoryPage,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_customer_history(
    customer_id: CustomerIdPath,
    resources: ResourcesDep,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> HistoryPage:
    """A customer's segment transitions, newest first, a page at a time."""
    page = await service.history_page(resources.db, customer_id, cursor, limit)
    _audit(resources, who, "customer.history.read", customer_id)
    return page
