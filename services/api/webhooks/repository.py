"""All SQL of /v1/webhooks, in the request's unit of work. Replay's lane rules are the
dispatcher's (services/webhooks/repository.py `requeue`), so both keep one invariant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from services.webhooks.repository import disable, requeue

__all__ = ["disable", "requeue"]

_SUBSCRIPTION = """
    id, url, description, dimensions, audiences, segments, causes, is_enabled, disabled_at,
    disabled_reason, consecutive_failures, failing_since, last_success_at,
    previous_secret_expires_at, created_at, updated_at
"""
_DELIVERY = """
    id, event_id, event_type, customer_id, status, failed_reason, attempts, next_attempt_at,
    last_status_code, last_error, last_latency_ms, enqueued_at, delivered_at
"""


async def insert_subscription(
    conn: asyncpg.Connection,
    subscription_id: uuid.UUID,
    url: str,
    description: str,
    filters: dict[str, list[str]],
    secret: str,
    created_by: str,
    now: datetime,
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        INSERT INTO webhook_subscriptions
            (id, url, description, dimensions, audiences, segments, causes, secret,
             created_by, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
        RETURNING {_SUBSCRIPTION}
        """,  # noqa: S608 - a constant
        subscription_id,
        url,
        description,
        filters["dimensions"],
        filters["audiences"],
        filters["segments"],
        filters["causes"],
        secret,
        created_by,
        now,
    )


async def list_subscriptions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(f"SELECT {_SUBSCRIPTION} FROM webhook_subscriptions ORDER BY created_at")  # noqa: S608
    )


async def find_subscription(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_SUBSCRIPTION} FROM webhook_subscriptions WHERE id = $1{lock}",  # noqa: S608
        subscription_id,
    )


async def update_subscription(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, changes: dict[str, Any], now: datetime
) -> asyncpg.Record:
    """Set the columns in `changes` (names from this module's callers only)."""
    names = [*changes, "updated_at"]
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    return await conn.fetchrow(
        f"""
        UPDATE webhook_subscriptions SET {assignments}
        WHERE id = $1 RETURNING {_SUBSCRIPTION}
        """,  # noqa: S608 - column names are the service's constants
        subscription_id,
        *changes.values(),
        now,
    )


async def enable(conn: asyncpg.Connection, subscription_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        """
        UPDATE webhook_subscriptions
        SET is_enabled = true, disabled_at = NULL, disabled_reason = NULL,
            consecutive_failures = 0, failing_since = NULL, updated_at = $2
        WHERE id = $1
        """,
        subscription_id,
        now,
    )


async def rotate_secret(
    conn: asyncpg.Connection,
    subscription_id: uuid.UUID,
    secret: str,
    previous_expires_at: datetime | None,
    now: datetime,
) -> asyncpg.Record | None:
    """The new secret signs from now; the current one becomes the previous one and signs
    until `previous_expires_at` (None: not at all)."""
    return await conn.fetchrow(
        """
        UPDATE webhook_subscriptions
        SET previous_secret = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE secret END,
            previous_secret_expires_at = $3, secret = $2, updated_at = $4
        WHERE id = $1 RETURNING previous_secret_expires_at
        """,
        subscription_id,
        secret,
        previous_expires_at,
        now,
    )


async def delete_subscription(conn: asyncpg.Connection, subscription_id: uuid.UUID) -> bool:
    result = await conn.execute("DELETE FROM webhook_subscriptions WHERE id = $1", subscription_id)
    return bool(result != "DELETE 0")


async def deliveries(
    conn: asyncpg.Connection,
    subscription_id: uuid.UUID,
    *,
    status: str | None,
    customer_id: str | None,
    before: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of the log, newest first."""
    return list(
        await conn.fetch(
            f"""
            SELECT {_DELIVERY} FROM webhook_deliveries
            WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR customer_id = $3) AND ($4::bigint IS NULL OR id < $4)
            ORDER BY id DESC LIMIT $5
            """,  # noqa: S608 - a constant
            subscription_id,
            status,
            customer_id,
            before,
            limit,
        )
    )


async def delivery(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, delivery_id: int
) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    row = await conn.fetchrow(
        f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE subscription_id = $1 AND id = $2",  # noqa: S608
        subscription_id,
        delivery_id,
    )
    if row is None:
        return None, []
    attempts = await conn.fetch(
        """
        SELECT attempt, attempted_at, status_code, error, latency_ms
        FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id
        """,
        delivery_id,
    )
    return row, list(attempts)


async def delivery_of_change(
    conn: asyncpg.Connection, subscription_id: uuid.UUID, change_id: str
) -> int | None:
    value = await conn.fetchval(
        "SELECT id FROM webhook_deliveries WHERE subscription_id = $1 AND event_id = $2",
        subscription_id,
        change_id,
    )
    return None if value is None else int(value)
