"""All of ingest's SQL. Every function runs inside the caller's transaction and never commits.

Bulk statements take parallel arrays and `unnest` them, so a batch of thousands of events
costs a handful of round trips.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.ingest.literals import decimal_array, int_array, text_array
from shared.events import INTERACTION_EVENT_TYPES

# Column order of the per-type counters in customer_aggregates.
INTERACTION_TYPES = tuple(sorted(INTERACTION_EVENT_TYPES))


class FencedError(Exception):
    """Another worker owns the partition now; this batch must not commit."""

    retriable = False


@dataclass(frozen=True, slots=True)
class Ownership:
    topic: str
    partition: int
    next_offset: int
    epoch: int


@dataclass(slots=True)
class OrderChange:
    """The net effect of one batch on one order row."""

    customer_id: str
    order_id: str
    placed_at: datetime | None = None
    amount: Decimal | None = None
    channel: str | None = None
    refunded: Decimal = Decimal(0)
    cancelled_at: datetime | None = None


async def claim_partitions(
    conn: asyncpg.Connection, topic_partitions: Sequence[tuple[str, int]], owner: str
) -> list[Ownership]:
    """Become the owner of these partitions: bump each epoch and read where to resume.

    The bump waits for the row lock held by a previous owner's batch in flight, so that
    batch either commits before we read the offset or fails its fence check after.
    """
    rows = await conn.fetch(
        """
        INSERT INTO ingest_offsets (topic, partition, next_offset, owner_epoch, owner)
        SELECT t, p, 0, 1, $3 FROM unnest($1::text[], $2::int[]) AS u(t, p)
        ON CONFLICT (topic, partition) DO UPDATE
           SET owner_epoch = ingest_offsets.owner_epoch + 1, owner = $3, updated_at = now()
        RETURNING topic, partition, next_offset, owner_epoch
        """,
        [t for t, _ in topic_partitions],
        [p for _, p in topic_partitions],
        owner,
    )
    return [Ownership(r["topic"], r["partition"], r["next_offset"], r["owner_epoch"]) for r in rows]


async def advance_offsets(
    conn: asyncpg.Connection,
    advances: Sequence[tuple[Ownership, int]],
    max_event_at: Sequence[datetime | None] | None = None,
) -> None:
    """Move each partition's offset, but only while we still hold its epoch.

    Runs first in the batch's transaction so the row locks are taken early; raises
    FencedError if any partition has a newer owner.
    """
    rows = await conn.fetch(
        """
        UPDATE ingest_offsets AS o SET next_offset = u.n, updated_at = now(),
            max_event_at = GREATEST(o.max_event_at, u.m)
        FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::timestamptz[])
            AS u(t, p, e, n, m)
        WHERE o.topic = u.t AND o.partition = u.p AND o.owner_epoch = u.e
        RETURNING o.topic, o.partition
        """,
        [o.topic for o, _ in advances],
        [o.partition for o, _ in advances],
        [o.epoch for o, _ in advances],
        [n for _, n in advances],
        list(max_event_at) if max_event_at is not None else [None] * len(advances),
    )
    if len(rows) != len(advances):
        kept = {(r["topic"], r["partition"]) for r in rows}
        lost = [
            f"{o.topic}[{o.partition}]" for o, _ in advances if (o.topic, o.partition) not in kept
        ]
        raise FencedError(f"partitions now owned by another worker: {', '.join(lost)}")


async def skip_flush_wait(conn: asyncpg.Connection) -> None:
    """Let this transaction's commit return before its WAL reaches disk (see the worker's
    `_commit` for why that is safe for a batch)."""
    await conn.execute("SET LOCAL synchronous_commit = off")


async def keep_new_events(
    conn: asyncpg.Connection,
    event_ids: Sequence[str],
    seen_at: datetime,
    *,
    expect_new: bool,
    arg: str | None = None,
) -> set[str]:
    """Record these event ids as processed; return those not seen within the dedup window.

    With `expect_new` (the last batch had no duplicate) a plain insert in a savepoint comes
    first: it costs about 40% less per id than ON CONFLICT's speculative insertion, and a
    duplicate rolls it back to the conflict-aware insert, so the result is the same. `arg`
    is `text_array(event_ids)` when the caller built it ahead.
    """
    ids = text_array(event_ids) if arg is None else arg
    if expect_new:
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO processed_events (event_id, seen_at)"
                    " SELECT unnest($1::text::text[]), $2",
                    ids,
                    seen_at,
                )
            return set(event_ids)
        except asyncpg.UniqueViolationError:
            pass
    rows = await conn.fetch(
        """
        INSERT INTO processed_events (event_id, seen_at)
        SELECT unnest($1::text::text[]), $2
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        """,
        ids,
        seen_at,
    )
    return {r["event_id"] for r in rows}


def order_args(changes: Sequence[OrderChange]) -> tuple[Any, ...]:
    """`apply_orders`'s statement arguments, built ahead of the commit."""
    return (
        text_array([c.customer_id for c in changes]),
        text_array([c.order_id for c in changes]),
        [c.placed_at for c in changes],
        decimal_array([c.amount for c in changes]),
        text_array([c.channel for c in changes]),
        decimal_array([c.refunded for c in changes]),
        [c.cancelled_at for c in changes],
    )


async def apply_orders(conn: asyncpg.Connection, changes: Sequence[OrderChange]) -> None:
    """Merge order changes; each column merges commutatively so arrival order never matters.

    A placement fills placed_at and amount once (a second placement of the same order_id
    is ignored), refunds add up, and the earliest cancellation wins.
    """
    if changes:
        await apply_order_args(conn, order_args(changes))


async def apply_order_args(conn: asyncpg.Connection, args: tuple[Any, ...]) -> None:
    """`apply_orders` with its arguments built ahead by `order_args`."""
    await conn.execute(_ORDERS_SQL, *args)


_ORDERS_SQL = """
    INSERT INTO orders AS o (customer_id, order_id, placed_at, amount, channel, refunded,
                             cancelled_at)
    SELECT * FROM unnest($1::text::text[], $2::text::text[], $3::timestamptz[],
                         $4::text::numeric[], $5::text::text[], $6::text::numeric[],
                         $7::timestamptz[])
    ON CONFLICT (customer_id, order_id) DO UPDATE SET
        placed_at = COALESCE(o.placed_at, EXCLUDED.placed_at),
        amount = CASE WHEN o.placed_at IS NULL THEN EXCLUDED.amount ELSE o.amount END,
        channel = COALESCE(o.channel, EXCLUDED.channel),
        refunded = o.refunded + EXCLUDED.refunded,
        cancelled_at = LEAST(o.cancelled_at, EXCLUDED.cancelled_at)
"""


async def insert_interactions(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, datetime, str]]
) -> None:
    """Append interaction times (customer_id, occurred_at, type) for the rolling windows."""
    if rows:
        await conn.copy_records_to_table(
            "interactions", records=rows, columns=("customer_id", "occurred_at", "type")
        )


@dataclass(slots=True)
class CustomerTouch:
    """What one batch did to one customer's interaction-side aggregates."""

    customer_id: str
    counts: dict[str, int] = field(default_factory=dict)
    last_interaction_at: datetime | None = None
    last_add_to_cart_at: datetime | None = None
    last_event_at: datetime | None = None


_COUNT_COLUMNS = [f"{t}_count" for t in INTERACTION_TYPES]
_TOUCH_COLUMNS = [
    "customer_id",
    "interaction_count",
    "last_interaction_at",
    "last_add_to_cart_at",
    "last_event_at",
    *_COUNT_COLUMNS,
]
_TOUCH_ARRAYS = ", ".join(
    [
        "$1::text::text[]",
        "$2::text::bigint[]",
        "$3::timestamptz[]",
        "$4::timestamptz[]",
        "$5::timestamptz[]",
    ]
    + [f"${i}::text::bigint[]" for i in range(6, 6 + len(_COUNT_COLUMNS))]
)
_TOUCH_UPDATES = """
        interaction_count = a.interaction_count + EXCLUDED.interaction_count,
        last_interaction_at = GREATEST(a.last_interaction_at, EXCLUDED.last_interaction_at),
        last_add_to_cart_at = GREATEST(a.last_add_to_cart_at, EXCLUDED.last_add_to_cart_at),
        last_event_at = GREATEST(a.last_event_at, EXCLUDED.last_event_at),
        {increments},
        version = a.version + 1,
        updated_at = now()""".format(
    increments=",\n        ".join(f"{c} = a.{c} + EXCLUDED.{c}" for c in _COUNT_COLUMNS)
)
# Both statements are built once from the fixed list of event types above, never from input.
_TOUCH_SQL = f"""
    INSERT INTO customer_aggregates AS a ({", ".join(_TOUCH_COLUMNS)})
    SELECT * FROM unnest({_TOUCH_ARRAYS})
    ON CONFLICT (customer_id) DO UPDATE SET {_TOUCH_UPDATES}
"""  # noqa: S608
# The order side is recomputed from the order rows rather than adjusted by deltas, which
# keeps it exact whatever order the events came in (a cancellation or refund can arrive
# before the order it belongs to); doing it in the same statement writes each row once.
_TOUCH_WITH_ORDERS_SQL = f"""
    INSERT INTO customer_aggregates AS a (
        {", ".join(_TOUCH_COLUMNS)}, order_count, net_spend, first_order_at, last_order_at)
    SELECT u.*, o.* FROM unnest({_TOUCH_ARRAYS}) AS u({", ".join(_TOUCH_COLUMNS)})
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE placed_at IS NOT NULL AND cancelled_at IS NULL),
               COALESCE(sum(GREATEST(amount - refunded, 0))
                   FILTER (WHERE placed_at IS NOT NULL AND cancelled_at IS NULL), 0),
               min(placed_at) FILTER (WHERE cancelled_at IS NULL),
               max(placed_at) FILTER (WHERE cancelled_at IS NULL)
        FROM orders WHERE orders.customer_id = u.customer_id
    ) AS o
    ON CONFLICT (customer_id) DO UPDATE SET {_TOUCH_UPDATES},
        order_count = EXCLUDED.order_count,
        net_spend = EXCLUDED.net_spend,
        first_order_at = EXCLUDED.first_order_at,
        last_order_at = EXCLUDED.last_order_at
"""  # noqa: S608


def touch_args(
    touches: Sequence[CustomerTouch], order_customers: Collection[str] = frozenset()
) -> list[tuple[str, tuple[Any, ...]]]:
    """`touch_customers`'s statements and arguments, built ahead of the commit."""
    with_orders = set(order_customers)
    out = []
    for sql, part in (
        (_TOUCH_SQL, [t for t in touches if t.customer_id not in with_orders]),
        (_TOUCH_WITH_ORDERS_SQL, [t for t in touches if t.customer_id in with_orders]),
    ):
        if part:
            args = (
                text_array([t.customer_id for t in part]),
                int_array([sum(t.counts.values()) for t in part]),
                [t.last_interaction_at for t in part],
                [t.last_add_to_cart_at for t in part],
                [t.last_event_at for t in part],
                *(int_array([t.counts.get(kind, 0) for t in part]) for kind in INTERACTION_TYPES),
            )
            out.append((sql, args))
    return out


async def touch_customers(
    conn: asyncpg.Connection,
    touches: Sequence[CustomerTouch],
    order_customers: Collection[str] = frozenset(),
) -> None:
    """Add interaction counts and keep the latest times; creates missing customers.

    Sums and maxima commute, so these merge exactly whatever order events arrive in. The
    customers in `order_customers` also get their order side recomputed from their order
    rows, so `apply_orders` must run first in the same transaction.
    """
    await touch_with_args(conn, touch_args(touches, order_customers))


async def touch_with_args(
    conn: asyncpg.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]
) -> None:
    """`touch_customers` with its statements built ahead by `touch_args`."""
    for sql, args in statements:
        await conn.execute(sql, *args)


def queue_args(
    customer_ids: Sequence[str], cause_event_at: Sequence[datetime | None]
) -> tuple[Any, ...]:
    """`mark_for_segmentation`'s arguments but the due time, built ahead of the commit."""
    return (text_array(customer_ids), list(cause_event_at))


async def mark_for_segmentation(
    conn: asyncpg.Connection,
    customer_ids: Sequence[str],
    due_at: datetime,
    cause_event_at: Sequence[datetime],
) -> None:
    """Queue these customers for re-evaluation at `due_at`, in the same transaction as
    their data."""
    await mark_with_args(conn, queue_args(customer_ids, cause_event_at), due_at)


async def mark_with_args(conn: asyncpg.Connection, args: tuple[Any, ...], due_at: datetime) -> None:
    """`mark_for_segmentation` with its arguments built ahead by `queue_args`."""
    ids, causes = args
    await conn.execute(
        """
        INSERT INTO segmentation_queue AS q (customer_id, due_at, cause_event_at)
        SELECT u.customer_id, $2, u.cause_event_at
        FROM unnest($1::text::text[], $3::timestamptz[]) AS u(customer_id, cause_event_at)
        ON CONFLICT (customer_id) DO UPDATE SET
            due_at = LEAST(q.due_at, EXCLUDED.due_at),
            cause_event_at = GREATEST(q.cause_event_at, EXCLUDED.cause_event_at),
            cause = 'event',
            enqueued_at = now()
        """,
        ids,
        due_at,
        causes,
    )


async def event_time_watermark(conn: asyncpg.Connection) -> datetime | None:
    """The latest event time ingested on any partition: "now" for the event-time clock."""
    value: datetime | None = await conn.fetchval("SELECT max(max_event_at) FROM ingest_offsets")
    return value


async def prune(
    conn: asyncpg.Connection, dedup_before: datetime, interactions_before: datetime
) -> tuple[int, int]:
    """Forget event ids past the dedup window and interaction rows past every window."""
    dedup = await conn.execute("DELETE FROM processed_events WHERE seen_at < $1", dedup_before)
    inter = await conn.execute(
        "DELETE FROM interactions WHERE occurred_at < $1", interactions_before
    )
    return int(dedup.split()[-1]), int(inter.split()[-1])


@dataclass(frozen=True, slots=True)
class CustomerAggregates:
    """Aggregates of one customer as of a moment, windows included."""

    customer_id: str
    order_count: int
    net_spend: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    average_order_value: Decimal | None
    orders_30d: int
    orders_90d: int
    orders_365d: int
    spend_30d: Decimal
    spend_90d: Decimal
    spend_365d: Decimal
    interaction_count: int
    interaction_counts: dict[str, int]
    last_interaction_at: datetime | None
    interactions_7d: int
    interactions_30d: int
    open_cart_at: datetime | None


async def fetch_aggregates(
    conn: asyncpg.Connection, customer_ids: Sequence[str], as_of: datetime
) -> dict[str, CustomerAggregates]:
    """Read aggregates with the rolling windows computed as of `as_of`, so they are exact
    whenever they are read, without any event to expire old orders from a window."""
    rows = await conn.fetch(
        """
        SELECT a.customer_id, a.order_count, a.net_spend, a.first_order_at, a.last_order_at,
               a.interaction_count, a.last_interaction_at,
               CASE WHEN a.last_add_to_cart_at IS NOT NULL
                     AND (a.last_order_at IS NULL OR a.last_add_to_cart_at > a.last_order_at)
                    THEN a.last_add_to_cart_at END AS open_cart_at,
               w.*, iw.*, {counts}
        FROM customer_aggregates a
        CROSS JOIN (SELECT $2::timestamptz AS at) p
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE placed_at > p.at - interval '30 days') AS orders_30d,
                   count(*) FILTER (WHERE placed_at > p.at - interval '90 days') AS orders_90d,
                   count(*) AS orders_365d,
                   COALESCE(sum(GREATEST(amount - refunded, 0))
                            FILTER (WHERE placed_at > p.at - interval '30 days'), 0) AS spend_30d,
                   COALESCE(sum(GREATEST(amount - refunded, 0))
                            FILTER (WHERE placed_at > p.at - interval '90 days'), 0) AS spend_90d,
                   COALESCE(sum(GREATEST(amount - refunded, 0)), 0) AS spend_365d
            FROM orders
            WHERE customer_id = a.customer_id AND cancelled_at IS NULL
              AND placed_at > p.at - interval '365 days' AND placed_at <= p.at
        ) w ON true
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE occurred_at > p.at - interval '7 days')
                       AS interactions_7d,
                   count(*) AS interactions_30d
            FROM interactions
            WHERE customer_id = a.customer_id
              AND occurred_at > p.at - interval '30 days' AND occurred_at <= p.at
        ) iw ON true
        WHERE a.customer_id = ANY($1::text[])
        """.format(counts=", ".join(f"a.{c}" for c in _COUNT_COLUMNS)),  # noqa: S608
        list(customer_ids),
        as_of,
    )
    out: dict[str, CustomerAggregates] = {}
    for r in rows:
        count = r["order_count"]
        out[r["customer_id"]] = CustomerAggregates(
            customer_id=r["customer_id"],
            order_count=count,
            net_spend=r["net_spend"],
            first_order_at=r["first_order_at"],
            last_order_at=r["last_order_at"],
            average_order_value=(r["net_spend"] / count).quantize(Decimal("0.0001"))
            if count
            else None,
            orders_30d=r["orders_30d"],
            orders_90d=r["orders_90d"],
            orders_365d=r["orders_365d"],
            spend_30d=r["spend_30d"],
            spend_90d=r["spend_90d"],
            spend_365d=r["spend_365d"],
            interaction_count=r["interaction_count"],
            interaction_counts={
                t: r[c] for t, c in zip(INTERACTION_TYPES, _COUNT_COLUMNS, strict=True)
            },
            last_interaction_at=r["last_interaction_at"],
            interactions_7d=r["interactions_7d"],
            interactions_30d=r["interactions_30d"],
            open_cart_at=r["open_cart_at"],
        )
    return out
