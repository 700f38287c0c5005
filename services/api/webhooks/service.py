"""Subscriptions, rotation and replay: the rules between the routes and the SQL.

A target is checked when a subscription is written (shared/webhooks/targets.py) and again
by the dispatcher at every connection. Secrets are stored as they are (an HMAC needs the
key itself) and answered only once, when made.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.api.errors import ApiError, not_found
from services.api.webhooks import repository
from services.api.webhooks.schemas import (
    FiltersBody,
    NewSubscription,
    ReplayRequest,
    SubscriptionPatch,
    SubscriptionView,
)
from shared.webhooks.signing import InvalidSecretError, new_secret, secret_key
from shared.webhooks.targets import TargetRefusedError, check_target


async def check_url(url: str, *, allow_private: bool) -> None:
    try:
        await check_target(url, allow_private=allow_private)
    except TargetRefusedError as exc:
        raise ApiError(422, "webhook_target_refused", str(exc)) from None


def checked_secret(secret: str | None) -> str:
    if secret is None:
        return new_secret()
    try:
        secret_key(secret)
    except InvalidSecretError as exc:
        raise ApiError(422, "invalid_webhook_secret", str(exc)) from None
    return secret


def filters_columns(filters: FiltersBody) -> dict[str, list[str]]:
    return {
        "dimensions": sorted(set(filters.dimensions)),
        "audiences": sorted(set(filters.audiences)),
        "segments": sorted(set(filters.segments)),
        "causes": sorted(set(filters.causes)),
    }


def view(row: asyncpg.Record) -> SubscriptionView:
    return SubscriptionView(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        filters=FiltersBody(
            dimensions=row["dimensions"],
            audiences=row["audiences"],
            segments=row["segments"],
            causes=row["causes"],
        ),
        enabled=row["is_enabled"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
        consecutive_failures=row["consecutive_failures"],
        failing_since=row["failing_since"],
        last_success_at=row["last_success_at"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def create(
    conn: asyncpg.Connection, body: NewSubscription, actor: str, secret: str
) -> asyncpg.Record:
    return await repository.insert_subscription(
        conn,
        uuid.uuid4(),
        body.url,
        body.description,
        filters_columns(body.filters),
        secret,
        actor,
        datetime.now(UTC),
    )


async def update(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, patch: SubscriptionPatch
) -> asyncpg.Record:
    now = datetime.now(UTC)
    if await repository.find_subscription(conn, subscription_id, for_update=True) is None:
        raise _missing(subscription_id)
    changes: dict[str, Any] = {}
    if patch.url is not None:
        changes["url"] = patch.url
    if patch.description is not None:
        changes["description"] = patch.description
    if patch.filters is not None:
        changes.update(filters_columns(patch.filters))
    if patch.enabled is True:
        await repository.enable(conn, subscription_id, now)
    elif patch.enabled is False:
        await repository.disable(conn, [subscription_id], "disabled through the API", now)
    return await repository.update_subscription(conn, subscription_id, changes, now)


async def rotate(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, secret: str, grace_seconds: int
) -> datetime | None:
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=grace_seconds) if grace_seconds else None
    row = await repository.rotate_secret(conn, subscription_id, secret, expires, now)
    if row is None:
        raise _missing(subscription_id)
    result: datetime | None = row["previous_secret_expires_at"]
    return result


async def replay(
    conn: asyncpg.Connection,
    subscription_id: uuid.UUID,
    body: ReplayRequest,
    retry_total_seconds: float,
) -> int:
    subscription = await repository.find_subscription(conn, subscription_id, for_update=True)
    if subscription is None:
        raise _missing(subscription_id)
    if not subscription["is_enabled"]:
        raise ApiError(
            409,
            "webhook_disabled",
            "the subscription is disabled: enable it (PATCH enabled=true), then replay",
        )
    delivery_id, from_id = body.delivery_id, None
    change_id = body.change_id or body.from_change_id
    if change_id is not None:
        found = await repository.delivery_of_change(conn, subscription_id, change_id)
        if found is None:
            raise not_found(
                "webhook_delivery_not_found", f"no delivery of change {change_id} in the log"
            )
        delivery_id, from_id = (None, found) if body.from_change_id else (found, None)
    elif (await repository.delivery(conn, subscription_id, body.delivery_id or 0))[0] is None:
        raise not_found("webhook_delivery_not_found", f"no delivery {body.delivery_id}")
    now = datetime.now(UTC)
    return await repository.requeue(
        conn,
        subscription_id,
        delivery_id=delivery_id,
        from_delivery_id=from_id,
        now=now,
        deadline=now + timedelta(seconds=retry_total_seconds),
    )


def _missing(subscription_id: uuid.UUID) -> ApiError:
    return not_found("webhook_not_found", f"no webhook subscription {subscription_id}")
