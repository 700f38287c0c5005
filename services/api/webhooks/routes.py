"""/v1/webhooks: subscriptions to segment changes, their delivery log, and replay.

Reads need `webhooks:read`, writes `webhooks:write`; writes are audited in the transaction
that makes them. Deliveries are made by the dispatcher (`python -m services.webhooks`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from services.api.auth import repository as audit
from services.api.auth.keys import Principal
from services.api.auth.repository import AuditEntry
from services.api.deps import ResourcesDep, WebhooksReader, WebhooksWriter
from services.api.errors import error_responses, not_found
from services.api.webhooks import repository, service
from services.api.webhooks.schemas import (
    AttemptView,
    DeliveryDetail,
    DeliveryPage,
    DeliveryView,
    NewSubscription,
    NewSubscriptionView,
    ReplayRequest,
    ReplayResult,
    RotatedSecret,
    RotateSecret,
    SubscriptionList,
    SubscriptionPatch,
    SubscriptionView,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _entry(who: Principal, action: str, detail: dict[str, Any]) -> AuditEntry:
    return AuditEntry(datetime.now(UTC), who.actor, who.key_id, action, detail=detail)


@router.post(
    "",
    status_code=201,
    response_model=NewSubscriptionView,
    responses=error_responses(401, 403, 422, 503),
)
async def create_subscription(
    body: NewSubscription, resources: ResourcesDep, who: WebhooksWriter
) -> NewSubscriptionView:
    """Subscribe a URL to segment changes; the answer holds the signing secret, once."""
    await service.check_url(
        body.url, allow_private=resources.settings.webhooks_allow_private_targets
    )
    secret = service.checked_secret(body.secret)
    async with resources.db.transaction() as conn:
        row = await service.create(conn, body, who.actor, secret)
        detail = {"subscription_id": str(row["id"]), "url": body.url}
        await audit.insert_audit(conn, [_entry(who, "webhook.create", detail)])
    return NewSubscriptionView(**service.view(row).model_dump(), secret=secret)


@router.get("", response_model=SubscriptionList, responses=error_responses(401, 403, 503))
async def list_subscriptions(resources: ResourcesDep, who: WebhooksReader) -> SubscriptionList:
    """Every subscription with its state (never its secret)."""
    async with resources.db.read() as conn:
        rows = await repository.list_subscriptions(conn)
    return SubscriptionList(subscriptions=[service.view(r) for r in rows])


@router.get(
    "/{subscription_id}",
    response_model=SubscriptionView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_subscription(
    subscription_id: uuid.UUID, resources: ResourcesDep, who: WebhooksReader
) -> SubscriptionView:
    """One subscription with its state: enabled or why not, failures in a row."""
    async with resources.db.read() as conn:
        row = await repository.find_subscription(conn, subscription_id)
    if row is None:
        raise not_found("webhook_not_found", f"no webhook subscription {subscription_id}")
    return service.view(row)


@router.patch(
    "/{subscription_id}",
    response_model=SubscriptionView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def update_subscription(
    subscription_id: uuid.UUID,
    body: SubscriptionPatch,
    resources: ResourcesDep,
    who: WebhooksWriter,
) -> SubscriptionView:
    """Change the URL, description or filters, or disable or enable the subscription."""
    if body.url is not None:
        await service.check_url(
            body.url, allow_private=resources.settings.webhooks_allow_private_targets
        )
    async with resources.db.transaction() as conn:
        row = await service.update(conn, subscription_id, body)
        detail = {"subscription_id": str(subscription_id), **body.model_dump(exclude_none=True)}
        await audit.insert_audit(conn, [_entry(who, "webhook.update", detail)])
    return service.view(row)


@router.delete(
    "/{subscription_id}", status_code=204, responses=error_responses(401, 403, 404, 422, 503)
)
async def delete_subscription(
    subscription_id: uuid.UUID, resources: ResourcesDep, who: WebhooksWriter
) -> Response:
    """Delete the subscription and its delivery log."""
    async with resources.db.transaction() as conn:
        if not await repository.delete_subscription(conn, subscription_id):
            raise not_found("webhook_not_found", f"no webhook subscription {subscription_id}")
        detail = {"subscription_id": str(subscription_id)}
        await audit.insert_audit(conn, [_entry(who, "webhook.delete", detail)])
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/rotate-secret",
    response_model=RotatedSecret,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def rotate_secret(
    subscription_id: uuid.UUID, body: RotateSecret, resources: ResourcesDep, who: WebhooksWriter
) -> RotatedSecret:
    """A new signing secret (shown once); the old one still signs for `grace_seconds`."""
    secret = service.checked_secret(body.secret)
    async with resources.db.transaction() as conn:
        expires = await service.rotate(conn, subscription_id, secret, body.grace_seconds)
        detail = {"subscription_id": str(subscription_id), "grace_seconds": body.grace_seconds}
        await audit.insert_audit(conn, [_entry(who, "webhook.rotate_secret", detail)])
    return RotatedSecret(secret=secret, previous_secret_expires_at=expires)


@router.get(
    "/{subscription_id}/deliveries",
    response_model=DeliveryPage,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def list_deliveries(
    subscription_id: uuid.UUID,
    resources: ResourcesDep,
    who: WebhooksReader,
    status: Literal["pending", "delivered", "failed"] | None = None,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    """The delivery log, newest first: state, attempts, last status code and latency,
    next attempt."""
    async with resources.db.read() as conn:
        if await repository.find_subscription(conn, subscription_id) is None:
            raise not_found("webhook_not_found", f"no webhook subscription {subscription_id}")
        rows = await repository.deliveries(
            conn,
            subscription_id,
            status=status,
            customer_id=customer_id,
            before=before,
            limit=limit,
        )
    items = [DeliveryView(**dict(r)) for r in rows]
    return DeliveryPage(items=items, next_before=items[-1].id if len(items) == limit else None)


@router.get(
    "/{subscription_id}/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_delivery(
    subscription_id: uuid.UUID, delivery_id: int, resources: ResourcesDep, who: WebhooksReader
) -> DeliveryDetail:
    """One delivery with every attempt: when, status code or error, latency."""
    async with resources.db.read() as conn:
        row, attempts = await repository.delivery(conn, subscription_id, delivery_id)
    if row is None:
        raise not_found("webhook_delivery_not_found", f"no delivery {delivery_id}")
    return DeliveryDetail(**dict(row), attempt_log=[AttemptView(**dict(a)) for a in attempts])


@router.post(
    "/{subscription_id}/replay",
    response_model=ReplayResult,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def replay(
    subscription_id: uuid.UUID, body: ReplayRequest, resources: ResourcesDep, who: WebhooksWriter
) -> ReplayResult:
    """Send again a delivery (by id or change id), or every one from a change on, in order
    per customer, under their original `webhook-id`."""
    async with resources.db.transaction() as conn:
        count = await service.replay(
            conn, subscription_id, body, resources.settings.webhooks_retry_total_seconds
        )
        detail = {
            "subscription_id": str(subscription_id),
            **body.model_dump(exclude_none=True),
            "replayed": count,
        }
        await audit.insert_audit(conn, [_entry(who, "webhook.replay", detail)])
    return ReplayResult(replayed=count)
