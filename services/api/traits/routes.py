"""/v1/customers/{id}/traits: who the customer is.

A write is not applied here: it becomes one customer event on the customers topic, the
same contract and the same path as any other producer's, and ingest applies it (per trait
the latest event wins). So the answer is 202 once Kafka has the event, and 503 when it
does not, in which case nothing was accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response

from services.api.auth.keys import Principal
from services.api.auth.repository import AuditEntry
from services.api.customers.routes import CustomerIdPath
from services.api.deps import Reader, ResourcesDep, TraitsWriter
from services.api.errors import ApiError, error_responses, not_found
from services.api.publisher import PublishFailedError
from services.api.resources import Resources
from services.api.traits import repository, service
from services.api.traits.schemas import (
    CustomerTraitsView,
    PatchBody,
    ReplaceBody,
    TraitsAccepted,
    request_body,
)

router = APIRouter(prefix="/v1/customers", tags=["traits"])

_WRITE_ERRORS = error_responses(400, 401, 403, 413, 422, 503)


@router.put(
    "/{customer_id}/traits",
    status_code=202,
    response_model=TraitsAccepted,
    responses=_WRITE_ERRORS,
    openapi_extra=request_body(ReplaceBody),
)
async def replace_traits(
    customer_id: CustomerIdPath,
    request: Request,
    response: Response,
    resources: ResourcesDep,
    who: TraitsWriter,
) -> TraitsAccepted:
    """Replace the customer's traits: every trait the body does not set is cleared (202)."""
    return await _write(resources, who, request, response, customer_id, replace=True)


@router.patch(
    "/{customer_id}/traits",
    status_code=202,
    response_model=TraitsAccepted,
    responses=_WRITE_ERRORS,
    openapi_extra=request_body(PatchBody),
)
async def update_traits(
    customer_id: CustomerIdPath,
    request: Request,
    response: Response,
    resources: ResourcesDep,
    who: TraitsWriter,
) -> TraitsAccepted:
    """Set some of the customer's traits and clear those in `unset`; others stay (202)."""
    return await _write(resources, who, request, response, customer_id, replace=False)


@router.get(
    "/{customer_id}/traits",
    response_model=CustomerTraitsView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_traits(
    customer_id: CustomerIdPath, resources: ResourcesDep, who: Reader
) -> CustomerTraitsView:
    """The customer's current traits as ingest has applied them, with the event of each."""
    async with resources.db.read() as conn:
        row = await repository.stored_traits(conn, customer_id)
    if row is None:
        raise not_found(
            "traits_not_found",
            f"no traits stored for customer {customer_id!r} (writes apply asynchronously)",
        )
    resources.audit.record(
        AuditEntry(datetime.now(UTC), who.actor, who.key_id, "customer.traits.read", customer_id)
    )
    return service.view(customer_id, row)


async def _write(
    resources: Resources,
    who: Principal,
    request: Request,
    response: Response,
    customer_id: str,
    *,
    replace: bool,
) -> TraitsAccepted:
    now = datetime.now(UTC)
    event, raw = service.build_event(customer_id, await request.body(), replace=replace, now=now)
    try:
        await resources.kafka.publish(
            [(resources.settings.customers_topic, customer_id.encode(), raw)],
            resources.settings.traits_produce_timeout_ms / 1000,
        )
    except PublishFailedError as exc:
        raise ApiError(
            503,
            "kafka_unavailable",
            f"the traits were not accepted, nothing changed: {exc}; retry (with the same "
            "event_id to be safe)",
            {"Retry-After": "1"},
        ) from exc
    action = "customer.traits.replace" if replace else "customer.traits.update"
    detail = {
        "event_id": event.event_id,
        "set": sorted(event.stored_values()),
        "unset": sorted(event.unset),
    }
    resources.audit.record(AuditEntry(now, who.actor, who.key_id, action, customer_id, detail))
    response.headers["Location"] = f"{router.prefix}/{customer_id}/traits"
    return TraitsAccepted(
        customer_id=customer_id, event_id=event.event_id, occurred_at=event.occurred_at
    )
