"""All SQL of the webhook dispatcher, and the lane rules the API's replay shares. No commit
anywhere: the intake's batch, the sender's flush and the API request own the transaction.

A lane is one (subscription, customer). Its pending deliveries go out one at a time, in the
change topic's order (one customer is always on one partition). The lane's *head* is its one
pending delivery with `next_attempt_at` set; the others wait with NULL, and only heads are
ever claimed. When a head ends (delivered or failed), the next pending row of its lane
becomes the head in the same transaction (`promote_lanes`).

Why a lane never has two heads, nor pending rows without one:
- a writer adding rows to a lane (the intake, a replay) first locks the lane's head FOR
  SHARE, so it and the flush that ends that head run one after the other; the later of the
  two sees the other's rows when it promotes;
- intakes write disjoint lanes (a customer is on one partition, a partition has one owner)
  and hold the lanes lock shared; a replay holds it exclusively, so no intake adds a head
  to an empty lane while the replay does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_LANES_LOCK = "hashtext(current_schema() || ':webhook_lanes')"


@dataclass(frozen=True, slots=True)
class Subscription:
    """What the intake matches a change against."""

    id: uuid.UUID
    dimensions: frozenset[str]
    audiences: frozenset[str]
    segments: frozenset[str]
    causes: frozenset[str]
    is_enabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewDelivery:
    subscription_id: uuid.UUID
    is_enabled: bool
    event_id: str
    event_type: str
    customer_id: str
    partition: int
    offset: int
    event_time: datetime | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender leased, with what it needs to send it."""

    id: int
    subscription_id: uuid.UUID
    event_id: str
    customer_id: str
    payload: bytes
    attempts: int
    deadline_at: datetime
    event_time: datetime | None


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    secrets: tuple[str, ...]  # current first, then the previous one while it still signs


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to, as the sender decided it."""

    delivery_id: int
    subscription_id: uuid.UUID
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    latency_ms: float
    state: str  # delivered, pending (retry at next_attempt_at) or failed
    next_attempt_at: datetime | None
    failed_reason: str | None  # exhausted, gone
    is_success: bool
    is_gone: bool


# The intake --------------------------------------------------------------------------------
async def subscriptions(conn: asyncpg.Connection) -> list[Subscription]:
    rows = await conn.fetch(
        "SELECT id, dimensions, audiences, segments, causes, is_enabled, created_at "
        "FROM webhook_subscriptions"
    )
    return [
        Subscription(
            r["id"],
            frozenset(r["dimensions"]),
            frozenset(r["audiences"]),
            frozenset(r["segments"]),
            frozenset(r["causes"]),
            r["is_enabled"],
            r["created_at"],
        )
        for r in rows
    ]


async def enqueue(
    conn: asyncpg.Connection, deliveries: Sequence[NewDelivery], now: datetime, deadline: datetime
) -> tuple[int, int]:
    """Write the deliveries, each lane's in topic order; returns (pending, failed) written.

    A delivery already in the log (the topic read again after a crash, or a change the
    outbox published twice) is left as it is. One for a disabled subscription goes in as
    failed, so that it can be replayed once the subscription is enabled again.
    """
    if not deliveries:
        return 0, 0
    await conn.execute(f"SELECT pg_advisory_xact_lock_shared({_LANES_LOCK})")
    ordered = sorted(deliveries, key=lambda d: (d.partition, d.offset))
    live = [d for d in ordered if d.is_enabled]
    await _lock_heads(conn, [d.subscription_id for d in live], [d.customer_id for d in live])
    rows = await conn.fetch(
        """
        INSERT INTO webhook_deliveries AS d (
            subscription_id, event_id, event_type, customer_id, topic_partition, topic_offset,
            event_time, payload, status, failed_reason, deadline_at, enqueued_at
        )
        SELECT s, e, t, c, p, o, et, pl,
               CASE WHEN live THEN 'pending' ELSE 'failed' END,
               CASE WHEN live THEN NULL ELSE 'subscription_disabled' END, $10, $11
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[],
                    $7::timestamptz[], $8::bytea[], $9::boolean[])
             AS n(s, e, t, c, p, o, et, pl, live)
        ORDER BY p, o
        ON CONFLICT (subscription_id, event_id) DO NOTHING
        RETURNING d.status
        """,
        [d.subscription_id for d in ordered],
        [d.event_id for d in ordered],
        [d.event_type for d in ordered],
        [d.customer_id for d in ordered],
        [d.partition for d in ordered],
        [d.offset for d in ordered],
        [d.event_time for d in ordered],
        [d.payload for d in ordered],
        [d.is_enabled for d in ordered],
        deadline,
        now,
    )
    pending = sum(1 for r in rows if r["status"] == "pending")
    if pending:
        await promote_lanes(
            conn, [d.subscription_id for d in live], [d.customer_id for d in live], now, deadline
        )
    return pending, len(rows) - pending


async def _lock_heads(
    conn: asyncpg.Connection, subscription_ids: Sequence[uuid.UUID], customers: Sequence[str]
) -> None:
    if not subscription_ids:
        return
    await conn.execute(
        """
        SELECT d.id FROM webhook_deliveries d
        JOIN (SELECT DISTINCT s, c FROM unnest($1::uuid[], $2::text[]) AS l(s, c)) lane
          ON d.subscription_id = lane.s AND d.customer_id = lane.c
        WHERE d.status = 'pending' AND d.next_attempt_at IS NOT NULL
        ORDER BY d.id
        FOR SHARE OF d
        """,
        list(subscription_ids),
        list(customers),
    )


async def promote_lanes(
    conn: asyncpg.Connection,
    subscription_ids: Sequence[uuid.UUID],
    customers: Sequence[str],
    now: datetime,
    deadline: datetime,
) -> int:
    """Give each of these lanes that has pending rows but no head its first pending row as
    head, due `now`, to be retried until `deadline`: a delivery's retry time starts when it
    is its lane's turn, not while it waits behind a failing one. Returns how many lanes got
    one."""
    if not subscription_ids:
        return 0
    result = await conn.execute(
        """
        WITH lane AS (
            SELECT DISTINCT s, c FROM unnest($1::uuid[], $2::text[]) AS l(s, c)
        ), first AS (
            SELECT DISTINCT ON (d.subscription_id, d.customer_id)
                   d.id, d.next_attempt_at IS NOT NULL AS is_head
            FROM webhook_deliveries d JOIN lane ON d.subscription_id = lane.s
                                               AND d.customer_id = lane.c
            WHERE d.status = 'pending'
            ORDER BY d.subscription_id, d.customer_id, d.topic_partition, d.topic_offset
        )
        UPDATE webhook_deliveries d SET next_attempt_at = $3, deadline_at = $4
        FROM first
        WHERE d.id = first.id AND NOT first.is_head
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries h
              WHERE h.subscription_id = d.subscription_id AND h.customer_id = d.customer_id
                AND h.status = 'pending' AND h.next_attempt_at IS NOT NULL
          )
        """,
        list(subscription_ids),
        list(customers),
        now,
        deadline,
    )
    return int(result.split()[-1])


# The senders -------------------------------------------------------------------------------
async def claim(
    conn: asyncpg.Connection, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[Claimed]:
    """Lease up to `limit` due heads for `owner`, oldest due first. The lease is the row's
    `next_attempt_at`: if `owner` dies with it, the delivery is due again when it ends.
    Heads another sender is leasing right now are skipped, never waited for."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending' AND next_attempt_at IS NOT NULL AND next_attempt_at <= $1
            ORDER BY next_attempt_at
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d SET next_attempt_at = $2, leased_by = $3
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.subscription_id, d.event_id, d.customer_id, d.payload, d.attempts,
                  d.deadline_at, d.event_time
        """,
        now,
        lease_until,
        owner,
        limit,
    )
    return [
        Claimed(
            r["id"],
            r["subscription_id"],
            r["event_id"],
            r["customer_id"],
            r["payload"],
            r["attempts"],
            r["deadline_at"],
            r["event_time"],
        )
        for r in rows
    ]


async def targets(
    conn: asyncpg.Connection, subscription_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, Target]:
    """URL and signing secrets of these subscriptions (the previous secret while its grace
    period lasts)."""
    rows = await conn.fetch(
        """
        SELECT id, url, secret,
               CASE WHEN previous_secret_expires_at > $2 THEN previous_secret END AS previous
        FROM webhook_subscriptions WHERE id = ANY($1::uuid[])
        """,
        list(set(subscription_ids)),
        now,
    )
    return {
        r["id"]: Target(r["url"], (r["secret"],) + ((r["previous"],) if r["previous"] else ()))
        for r in rows
    }


async def record(
    conn: asyncpg.Connection,
    owner: str,
    outcomes: Sequence[Outcome],
    now: datetime,
    deadline: datetime,
) -> list[tuple[uuid.UUID, str]]:
    """Write the attempts and what they decided, and move each lane whose head ended on to
    its next row. A delivery whose lease `owner` lost (it ran out, another sender took it)
    gets its attempt logged but keeps its state. Returns the (subscription, customer) lanes
    that moved on."""
    if not outcomes:
        return []
    ordered = sorted(outcomes, key=lambda o: o.delivery_id)
    # Joined to the log: a delivery whose subscription was deleted meanwhile is gone.
    await conn.execute(
        """
        INSERT INTO webhook_attempts
            (delivery_id, attempt, attempted_at, status_code, error, latency_ms)
        SELECT a.id, a.attempt, a.at, a.code, a.error, a.latency
        FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::text[],
                    $6::float8[]) AS a(id, attempt, at, code, error, latency)
        JOIN webhook_deliveries d ON d.id = a.id
        """,
        [o.delivery_id for o in ordered],
        [o.attempt for o in ordered],
        [o.attempted_at for o in ordered],
        [o.status_code for o in ordered],
        [o.error for o in ordered],
        [o.latency_ms for o in ordered],
    )
    rows = await conn.fetch(
        """
        WITH r AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[],
                                 $5::int[], $6::text[], $7::float8[], $8::int[])
                 AS r(id, state, next_at, reason, code, error, latency, attempt)
        ), locked AS (
            SELECT d.id, d.status FROM webhook_deliveries d JOIN r ON d.id = r.id
            WHERE d.leased_by = $9 ORDER BY d.id FOR UPDATE OF d
        )
        UPDATE webhook_deliveries d
        SET status = CASE WHEN r.state = 'delivered' THEN 'delivered'
                          WHEN locked.status = 'pending' THEN r.state ELSE locked.status END,
            next_attempt_at = CASE WHEN r.state = 'pending' AND locked.status = 'pending'
                                   THEN r.next_at END,
            failed_reason = CASE WHEN r.state = 'delivered' THEN NULL
                                 WHEN locked.status = 'pending' THEN r.reason
                                 ELSE d.failed_reason END,
            delivered_at = CASE WHEN r.state = 'delivered' THEN $10::timestamptz END,
            leased_by = NULL,
            attempts = GREATEST(d.attempts, r.attempt),
            last_status_code = r.code, last_error = r.error, last_latency_ms = r.latency
        FROM r JOIN locked ON locked.id = r.id
        WHERE d.id = r.id
        RETURNING d.subscription_id, d.customer_id, d.status, locked.status AS was
        """,
        [o.delivery_id for o in ordered],
        [o.state for o in ordered],
        [o.next_attempt_at for o in ordered],
        [o.failed_reason for o in ordered],
        [o.status_code for o in ordered],
        [o.error for o in ordered],
        [o.latency_ms for o in ordered],
        [o.attempt for o in ordered],
        owner,
        now,
    )
    ended = [
        (r["subscription_id"], r["customer_id"])
        for r in rows
        if r["was"] == "pending" and r["status"] != "pending"
    ]
    if ended:
        await promote_lanes(conn, [s for s, _ in ended], [c for _, c in ended], now, deadline)
    return ended


async def update_health(
    conn: asyncpg.Connection,
    successes: dict[uuid.UUID, int],
    failures: dict[uuid.UUID, int],
    now: datetime,
    *,
    disable_after_failures: int,
    disable_after_seconds: float,
) -> list[uuid.UUID]:
    """Count each subscription's attempts; a success ends its failing streak. Returns the
    subscriptions that have now failed long and often enough to be disabled."""
    ids = list(successes.keys() | failures.keys())
    rows = await conn.fetch(
        """
        UPDATE webhook_subscriptions s
        SET consecutive_failures = CASE WHEN h.ok > 0 THEN 0 ELSE s.consecutive_failures END
                                   + h.bad,
            failing_since = CASE WHEN h.bad = 0 THEN NULL
                                 WHEN h.ok > 0 OR s.failing_since IS NULL THEN $4
                                 ELSE s.failing_since END,
            last_success_at = CASE WHEN h.ok > 0 THEN $4 ELSE s.last_success_at END
        FROM unnest($1::uuid[], $2::int[], $3::int[]) AS h(id, ok, bad)
        WHERE s.id = h.id
        RETURNING s.id, s.is_enabled, s.consecutive_failures, s.failing_since
        """,
        ids,
        [successes.get(i, 0) for i in ids],
        [failures.get(i, 0) for i in ids],
        now,
    )
    return [
        r["id"]
        for r in rows
        if r["is_enabled"]
        and r["consecutive_failures"] >= disable_after_failures
        and r["failing_since"] is not None
        and (now - r["failing_since"]).total_seconds() >= disable_after_seconds
    ]


async def disable(
    conn: asyncpg.Connection, subscription_ids: Sequence[uuid.UUID], reason: str, now: datetime
) -> list[uuid.UUID]:
    """Disable these subscriptions (those still enabled), with `reason` in their state;
    their pending deliveries become failed (`subscription_disabled`), to be replayed once
    the subscription is enabled again. Returns the subscriptions this disabled."""
    if not subscription_ids:
        return []
    rows = await conn.fetch(
        """
        UPDATE webhook_subscriptions
        SET is_enabled = false, disabled_at = $2, disabled_reason = $3, updated_at = $2
        WHERE id = ANY($1::uuid[]) AND is_enabled
        RETURNING id
        """,
        list(subscription_ids),
        now,
        reason,
    )
    disabled = [r["id"] for r in rows]
    if disabled:
        await conn.execute(
            """
            UPDATE webhook_deliveries
            SET status = 'failed', failed_reason = 'subscription_disabled',
                next_attempt_at = NULL
            WHERE subscription_id = ANY($1::uuid[]) AND status = 'pending'
            """,
            disabled,
        )
    return disabled


# Replay (the API) ---------------------------------------------------------------------------
async def requeue(
    conn: asyncpg.Connection,
    subscription_id: uuid.UUID,
    *,
    delivery_id: int | None,
    from_delivery_id: int | None,
    now: datetime,
    deadline: datetime,
) -> int:
    """Put deliveries of an enabled subscription back in their lanes, pending with a fresh
    deadline: the one `delivery_id`, or every one from `from_delivery_id` on in log order.
    Rows already pending are left as they are. Returns how many were requeued."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LANES_LOCK})")
    lanes = await conn.fetch(
        """
        SELECT DISTINCT customer_id FROM webhook_deliveries
        WHERE subscription_id = $1 AND status <> 'pending'
          AND (id = $2 OR id >= $3)
        """,
        subscription_id,
        delivery_id,
        from_delivery_id,
    )
    customers = [r["customer_id"] for r in lanes]
    await _lock_heads(conn, [subscription_id] * len(customers), customers)
    result = await conn.execute(
        """
        UPDATE webhook_deliveries
        SET status = 'pending', next_attempt_at = NULL, failed_reason = NULL,
            delivered_at = NULL, leased_by = NULL, deadline_at = $4
        WHERE subscription_id = $1 AND status <> 'pending' AND (id = $2 OR id >= $3)
        """,
        subscription_id,
        delivery_id,
        from_delivery_id,
        deadline,
    )
    await promote_lanes(conn, [subscription_id] * len(customers), customers, now, deadline)
    return int(result.split()[-1])


# Maintenance --------------------------------------------------------------------------------
async def prune_delivered(conn: asyncpg.Connection, before: datetime, limit: int) -> int:
    """Forget up to `limit` deliveries delivered before `before` (failed ones stay)."""
    result = await conn.execute(
        """
        DELETE FROM webhook_deliveries WHERE id IN (
            SELECT id FROM webhook_deliveries
            WHERE status = 'delivered' AND delivered_at < $1 LIMIT $2
        )
        """,
        before,
        limit,
    )
    return int(result.split()[-1])


async def forget_expired_secrets(conn: asyncpg.Connection, now: datetime) -> None:
    await conn.execute(
        """
        UPDATE webhook_subscriptions
        SET previous_secret = NULL, previous_secret_expires_at = NULL
        WHERE previous_secret_expires_at <= $1
        """,
        now,
    )


async def disabled_count(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM webhook_subscriptions WHERE NOT is_enabled")
    )
