"""All of ingest's SQL. Every function runs inside the caller's transaction and never commits.

Bulk statements take parallel arrays and `unnest` them, so a batch of thousands of events
costs a handful of round trips.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from services.ingest.traits import StoredTraits, merge_events
from shared.db.literals import decimal_array, int_array, text_array
from shared.events import INTERACTION_EVENT_TYPES, CustomerTraits

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
    placed_event_id: str | None = None
    amount: Decimal | None = None
    channel: str | None = None
    refunded: Decimal = Decimal(0)
    cancelled_at: datetime | None = None
    currency: str | None = None
    items: str | None = None  # the placement's lines as JSON, unit prices in base currency


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


class OffsetsMovedError(Exception):
    """The stored offsets are not where this worker's batch starts: the batches after them
    were lost (a PostgreSQL crash took them back) and must be read again from there."""

    retriable = False

    def __init__(self, stored: dict[tuple[str, int], int]) -> None:
        super().__init__(
            "stored offsets differ from the batch's start: "
            + ", ".join(f"{t}[{p}] is at {n}" for (t, p), n in sorted(stored.items()))
        )
        self.stored = stored


async def advance_offsets(
    conn: asyncpg.Connection,
    advances: Sequence[tuple[Ownership, int]],
    max_event_at: Sequence[datetime | None] | None = None,
) -> None:
    """Move each partition's offset from where the batch starts to where it ends, but only
    while we still hold its epoch and the stored offset is that start.

    Runs first in the batch's transaction so the row locks are taken early. Raises
    FencedError if any partition has a newer owner, and OffsetsMovedError if a stored
    offset is not the batch's start: a batch committed without waiting for its WAL flush
    is lost with its offsets when PostgreSQL crashes, and a worker that lives on must read
    it again instead of moving the offsets past it.
    """
    rows = await conn.fetch(
        """
        UPDATE ingest_offsets AS o SET next_offset = u.n, updated_at = now(),
            max_event_at = GREATEST(o.max_event_at, u.m)
        FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::timestamptz[],
                    $6::bigint[])
            AS u(t, p, e, n, m, s)
        WHERE o.topic = u.t AND o.partition = u.p AND o.owner_epoch = u.e
          AND o.next_offset = u.s
        RETURNING o.topic, o.partition
        """,
        [o.topic for o, _ in advances],
        [o.partition for o, _ in advances],
        [o.epoch for o, _ in advances],
        [n for _, n in advances],
        list(max_event_at) if max_event_at is not None else [None] * len(advances),
        [o.next_offset for o, _ in advances],
    )
    if len(rows) == len(advances):
        return
    kept = {(r["topic"], r["partition"]) for r in rows}
    missed = [o for o, _ in advances if (o.topic, o.partition) not in kept]
    current = await stored_offsets(conn, [(o.topic, o.partition) for o in missed])
    lost = [o for o in missed if current.get((o.topic, o.partition), (None,))[0] != o.epoch]
    if lost:
        names = ", ".join(f"{o.topic}[{o.partition}]" for o in lost)
        raise FencedError(f"partitions now owned by another worker: {names}")
    raise OffsetsMovedError(
        {(o.topic, o.partition): current[(o.topic, o.partition)][1] for o in missed}
    )


async def stored_offsets(
    conn: asyncpg.Connection, topic_partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[int, int]]:
    """(owner epoch, next offset) of these partitions as PostgreSQL holds them now."""
    rows = await conn.fetch(
        """
        SELECT topic, partition, owner_epoch, next_offset FROM ingest_offsets
        WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))
        """,
        [t for t, _ in topic_partitions],
        [p for _, p in topic_partitions],
    )
    return {(r["topic"], r["partition"]): (r["owner_epoch"], r["next_offset"]) for r in rows}


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
    """The order arrays of `apply_orders`'s statements, built ahead of the commit."""
    return (
        text_array([c.customer_id for c in changes]),
        text_array([c.order_id for c in changes]),
        [c.placed_at for c in changes],
        decimal_array([c.amount for c in changes]),
        text_array([c.channel for c in changes]),
        decimal_array([c.refunded for c in changes]),
        [c.cancelled_at for c in changes],
        text_array([c.placed_event_id for c in changes]),
        text_array([c.currency for c in changes]),
        text_array([c.items for c in changes]),
    )


async def apply_orders(conn: asyncpg.Connection, changes: Sequence[OrderChange]) -> None:
    """Merge order changes and add what they change to their customers' order totals.

    Each column merges commutatively, so arrival order never matters: the earliest
    placement wins (ties: the smaller event id), refunds add up, the earliest cancellation
    wins. Customers missing from customer_aggregates are created.
    """
    if changes:
        await apply_batch(conn, [(_APPLY_ORDERS_SQL, order_args(changes))])


# The placement kept is the earliest by occurred_at, ties broken by the smaller event id.
_WINS = """EXCLUDED.placed_at IS NOT NULL AND (o.placed_at IS NULL
            OR (EXCLUDED.placed_at, EXCLUDED.placed_event_id)
               < (o.placed_at, o.placed_event_id))"""
_COUNTED_BEFORE = """CASE WHEN o.placed_at IS NOT NULL AND o.cancelled_at IS NULL
                   THEN GREATEST(o.amount - o.refunded, 0) END"""
# Where a statement's order changes come from: the batch's arrays (ingest), or a table of
# the same columns (the importer's staged chunk, `staged_statements`).
_ORDER_ARRAYS = """unnest($1::text::text[], $2::text::text[], $3::timestamptz[],
                $4::text::numeric[], $5::text::text[], $6::text::numeric[],
                $7::timestamptz[], $8::text::text[], $9::text::text[], $10::text::text[])
         AS u(c, o, p, a, ch, r, x, e, cu, i)"""
_ORDER_IDS = """unnest($1::text::text[], $2::text::text[], $8::text::text[])
             AS i(customer_id, order_id, placed_event_id)"""
_ORDERS_UPSERT = """
    INSERT INTO orders AS o (customer_id, order_id, placed_at, amount, channel, refunded,
                             cancelled_at, placed_event_id, currency, items)
    SELECT u.c, u.o, u.p, u.a, u.ch, u.r, u.x, u.e, u.cu, u.i::jsonb
    FROM {orders}
    ON CONFLICT (customer_id, order_id) DO UPDATE SET
        placed_at = CASE WHEN {wins} THEN EXCLUDED.placed_at ELSE o.placed_at END,
        amount = CASE WHEN {wins} THEN EXCLUDED.amount ELSE o.amount END,
        channel = CASE WHEN {wins} THEN EXCLUDED.channel ELSE o.channel END,
        currency = CASE WHEN {wins} THEN EXCLUDED.currency ELSE o.currency END,
        items = CASE WHEN {wins} THEN EXCLUDED.items ELSE o.items END,
        placed_event_id = CASE WHEN {wins} THEN EXCLUDED.placed_event_id
                               ELSE o.placed_event_id END,
        refunded = o.refunded + EXCLUDED.refunded,
        cancelled_at = LEAST(o.cancelled_at, EXCLUDED.cancelled_at),
        prev_net = {counted_before}
    RETURNING o.customer_id, o.order_id, o.placed_event_id, o.placed_at, o.prev_net,
              CASE WHEN o.placed_at IS NOT NULL AND o.cancelled_at IS NULL
                   THEN GREATEST(o.amount - o.refunded, 0) END AS net
"""
# Per customer, what the batch's order rows add to the totals: each row's upsert recorded,
# under that row's lock, what it counted for before (prev_net, NULL for nothing), so
# concurrent workers changing one customer's orders each add their own exact difference.
# first/last_order_at fold with LEAST/GREATEST unless an order that counted stopped
# counting or its placement moved: those customers (`recount`) are recomputed afterwards.
_ORDER_DELTAS = """
    changed AS ({upsert}),
    d AS (
        SELECT c.customer_id, count(c.net) - count(c.prev_net) AS n,
               COALESCE(sum(c.net), 0) - COALESCE(sum(c.prev_net), 0) AS spend,
               min(c.placed_at) FILTER (WHERE c.net IS NOT NULL) AS first_at,
               max(c.placed_at) FILTER (WHERE c.net IS NOT NULL) AS last_at,
               bool_or(c.prev_net IS NOT NULL
                       AND (c.net IS NULL OR c.placed_event_id = i.placed_event_id)) AS recount
        FROM changed c
        JOIN {ids}
          ON i.customer_id = c.customer_id AND i.order_id = c.order_id
        GROUP BY c.customer_id
    )"""


def _order_deltas(orders: str, ids: str) -> str:
    """`_ORDER_DELTAS` over order changes read from `orders` (columns c, o, p, a, ch, r, x,
    e, cu, i), with `ids` their (customer_id, order_id, placed_event_id) as `i`."""
    upsert = _ORDERS_UPSERT.format(orders=orders, wins=_WINS, counted_before=_COUNTED_BEFORE)
    return _ORDER_DELTAS.format(upsert=upsert, ids=ids)


_ORDER_TOTALS_UPDATES = """
        order_count = a.order_count + EXCLUDED.order_count,
        net_spend = a.net_spend + EXCLUDED.net_spend,
        first_order_at = LEAST(a.first_order_at, EXCLUDED.first_order_at),
        last_order_at = GREATEST(a.last_order_at, EXCLUDED.last_order_at)"""
_APPLY_ORDERS_SQL = f"""
    WITH {_order_deltas(_ORDER_ARRAYS, _ORDER_IDS)},
    totals AS (
        INSERT INTO customer_aggregates AS a (customer_id, order_count, net_spend,
                                              first_order_at, last_order_at)
        SELECT customer_id, n, spend, first_at, last_at FROM d ORDER BY customer_id
        ON CONFLICT (customer_id) DO UPDATE SET {_ORDER_TOTALS_UPDATES},
            version = a.version + 1, updated_at = now()
    )
    SELECT customer_id FROM d WHERE recount
"""  # noqa: S608
_RECOUNT_SQL = """
    UPDATE customer_aggregates a SET first_order_at = m.first_at, last_order_at = m.last_at
    FROM unnest($1::text[]) AS u(customer_id)
    CROSS JOIN LATERAL (
        SELECT min(placed_at) FILTER (WHERE cancelled_at IS NULL) AS first_at,
               max(placed_at) FILTER (WHERE cancelled_at IS NULL) AS last_at
        FROM orders WHERE orders.customer_id = u.customer_id
    ) AS m
    WHERE a.customer_id = u.customer_id
"""


async def apply_batch(
    conn: asyncpg.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]
) -> None:
    """Run a batch's statements as built by `touch_args` (or `apply_orders`).

    A statement that changes orders returns the customers whose first or last order time
    cannot be folded; they are recomputed last, under the row locks the statement took, so
    the read sees every order committed before it.
    """
    recount: set[str] = set()
    for sql, args in statements:
        if sql is _APPLY_ORDERS_SQL or sql is _ORDERS_AND_TOUCH_SQL:
            recount.update(r["customer_id"] for r in await conn.fetch(sql, *args))
        else:
            await conn.execute(sql, *args)
    if recount:
        await conn.execute(_RECOUNT_SQL, sorted(recount))


InteractionRecord = tuple[str, datetime, str, str, str | None]
PendingRecord = tuple[str, str | None, str | None, datetime | None, str | None, str | None]


async def insert_interactions(
    conn: asyncpg.Connection,
    rows: Sequence[InteractionRecord],
    pending: Sequence[PendingRecord] = (),
) -> None:
    """Append interactions (customer_id, occurred_at, type, event_id, properties as JSON)
    kept for the retention, and record what the batch changed for the segmenter's read
    model (fact_changes: customer_id, order_id, event_id, occurred_at, type, properties):
    every interaction, however old, and every order the batch touched."""
    if rows:
        await conn.copy_records_to_table(
            "interactions",
            records=rows,
            columns=("customer_id", "occurred_at", "type", "event_id", "properties"),
        )
    if pending:
        await conn.copy_records_to_table(
            "fact_changes",
            records=pending,
            columns=("customer_id", "order_id", "event_id", "occurred_at", "type", "properties"),
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


def _touch_arrays(first: int) -> str:
    """The touch statement's array parameters, numbered from `first`."""
    kinds = ["text", "bigint", "timestamptz", "timestamptz", "timestamptz"]
    kinds += ["bigint"] * len(_COUNT_COLUMNS)
    return ", ".join(
        f"${first + i}::{k}[]" if k == "timestamptz" else f"${first + i}::text::{k}[]"
        for i, k in enumerate(kinds)
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


def _touch_sql(touches: str) -> str:
    """The touch statement over `touches` (the columns of `_TOUCH_COLUMNS`, as `u`)."""
    return f"""
    INSERT INTO customer_aggregates AS a ({", ".join(_TOUCH_COLUMNS)})
    SELECT u.* FROM {touches}
    ON CONFLICT (customer_id) DO UPDATE SET {_TOUCH_UPDATES}
"""  # noqa: S608


def _orders_and_touch_sql(orders: str, ids: str, touches: str) -> str:
    """Customers with order changes: their order rows, the order totals and the interaction
    side in one statement, so each aggregates row is written once per batch."""
    return f"""
    WITH {_order_deltas(orders, ids)},
    totals AS (
        INSERT INTO customer_aggregates AS a (
            {", ".join(_TOUCH_COLUMNS)}, order_count, net_spend, first_order_at, last_order_at)
        SELECT u.*, COALESCE(d.n, 0), COALESCE(d.spend, 0), d.first_at, d.last_at
        FROM {touches}
        LEFT JOIN d ON d.customer_id = u.customer_id
        ORDER BY u.customer_id
        ON CONFLICT (customer_id) DO UPDATE SET {_TOUCH_UPDATES}, {_ORDER_TOTALS_UPDATES}
    )
    SELECT customer_id FROM d WHERE recount
"""  # noqa: S608


# Both statements are built once from the fixed list of event types above, never from input.
_TOUCH_SQL = _touch_sql(f"unnest({_touch_arrays(1)}) AS u({', '.join(_TOUCH_COLUMNS)})")
_ORDERS_AND_TOUCH_SQL = _orders_and_touch_sql(
    _ORDER_ARRAYS,
    _ORDER_IDS,
    f"unnest({_touch_arrays(11)}) AS u({', '.join(_TOUCH_COLUMNS)})",
)


def touch_args(
    touches: Sequence[CustomerTouch],
    order_customers: Collection[str] = frozenset(),
    order_changes: Sequence[OrderChange] = (),
) -> list[tuple[str, tuple[Any, ...]]]:
    """A batch's aggregate statements and arguments, built ahead of the commit for
    `apply_batch`: the customers in `order_customers` with their `order_changes` in one
    statement, the others in another."""
    with_orders = set(order_customers)
    out = []
    for sql, part in (
        (_TOUCH_SQL, [t for t in touches if t.customer_id not in with_orders]),
        (_ORDERS_AND_TOUCH_SQL, [t for t in touches if t.customer_id in with_orders]),
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
            if sql is _ORDERS_AND_TOUCH_SQL:
                args = order_args(order_changes) + args
            out.append((sql, args))
    return out


# Staged batches (the importer): the same statements over session tables filled by COPY,
# for chunks of tens of thousands of changes, where array parameters cost more to build
# and the planner's row estimates for `unnest` lead it to nested loops. The tables are
# emptied at each commit.
STAGED_ORDERS = "staged_order_changes"
STAGED_TOUCHES = "staged_touches"
_ORDER_COLUMNS = ("c", "o", "p", "a", "ch", "r", "x", "e", "cu", "i")
_STAGED_TOUCH_COLUMNS = (*_TOUCH_COLUMNS, "has_orders")
_STAGED_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGED_ORDERS} (c text, o text, p timestamptz,"
    " a numeric, ch text, r numeric, x timestamptz, e text, cu text, i text)"
    " ON COMMIT DELETE ROWS",
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGED_TOUCHES} (customer_id text,"
    " interaction_count bigint, last_interaction_at timestamptz,"
    " last_add_to_cart_at timestamptz, last_event_at timestamptz, "
    + ", ".join(f"{c} bigint" for c in _COUNT_COLUMNS)
    + ", has_orders bool) ON COMMIT DELETE ROWS",
)
_STAGED_TOUCH_SELECT = ", ".join(_TOUCH_COLUMNS)
# Constants only, as above.
_STAGED_TOUCH_SQL = _touch_sql(
    f"(SELECT {_STAGED_TOUCH_SELECT} FROM {STAGED_TOUCHES} WHERE NOT has_orders"  # noqa: S608
    " ORDER BY customer_id) AS u"
)
_STAGED_ORDERS_AND_TOUCH_SQL = _orders_and_touch_sql(
    f"(SELECT * FROM {STAGED_ORDERS} ORDER BY c, o) AS u",  # noqa: S608
    f"(SELECT c AS customer_id, o AS order_id, e AS placed_event_id"  # noqa: S608
    f" FROM {STAGED_ORDERS}) AS i",
    f"(SELECT {_STAGED_TOUCH_SELECT} FROM {STAGED_TOUCHES} WHERE has_orders) AS u",  # noqa: S608
)


async def create_staged_tables(conn: asyncpg.Connection) -> None:
    """The session tables `apply_staged_tables` reads (orders: c, o, p, a, ch, r, x, e, cu,
    i as in `order_args`; touches: `_TOUCH_COLUMNS` and has_orders), emptied at commit."""
    for ddl in _STAGED_DDL:
        await conn.execute(ddl)


async def apply_staged(
    conn: asyncpg.Connection,
    touches: Sequence[CustomerTouch],
    order_customers: Collection[str],
    order_changes: Sequence[OrderChange],
) -> None:
    """What `apply_batch` does with `touch_args(touches, order_customers, order_changes)`,
    the changes sent by COPY into session tables instead of as arrays. Same statements,
    same merge rules; the caller's transaction, which empties the tables at commit."""
    await create_staged_tables(conn)
    with_orders = set(order_customers)
    await conn.copy_records_to_table(
        STAGED_ORDERS,
        records=[
            (
                c.customer_id,
                c.order_id,
                c.placed_at,
                c.amount,
                c.channel,
                c.refunded,
                c.cancelled_at,
                c.placed_event_id,
                c.currency,
                c.items,
            )
            for c in order_changes
        ],
        columns=_ORDER_COLUMNS,
    )
    await conn.copy_records_to_table(
        STAGED_TOUCHES,
        records=[
            (
                t.customer_id,
                sum(t.counts.values()),
                t.last_interaction_at,
                t.last_add_to_cart_at,
                t.last_event_at,
                *(t.counts.get(kind, 0) for kind in INTERACTION_TYPES),
                t.customer_id in with_orders,
            )
            for t in touches
        ],
        columns=_STAGED_TOUCH_COLUMNS,
    )
    await apply_staged_tables(conn, has_touches_without_orders=len(with_orders) < len(touches))


async def apply_staged_tables(
    conn: asyncpg.Connection, *, has_touches_without_orders: bool = True
) -> None:
    """Merge what the session tables hold (filled by `apply_staged`, or by a caller's own
    set-based fold) with ingest's statements, and recount the customers they say to."""
    if has_touches_without_orders:
        await conn.execute(_STAGED_TOUCH_SQL)
    recount = [r["customer_id"] for r in await conn.fetch(_STAGED_ORDERS_AND_TOUCH_SQL)]
    if recount:
        await conn.execute(_RECOUNT_SQL, sorted(recount))


async def touch_customers(conn: asyncpg.Connection, touches: Sequence[CustomerTouch]) -> None:
    """Add interaction counts and keep the latest times; creates missing customers.

    Sums and maxima commute, so these merge exactly whatever order events arrive in.
    """
    await apply_batch(conn, touch_args(touches))


# Traits -----------------------------------------------------------------------------------
async def merge_traits(conn: asyncpg.Connection, events: Sequence[CustomerTraits]) -> None:
    """Merge profile events into their customers' `customer_traits` rows, per trait the
    latest event winning (services/ingest/traits.py).

    The rows are created if missing, then locked and read in customer order, so a
    concurrent batch or erasure waits, and each merge reads what the one before it wrote.
    Only rows that changed are written."""
    if not events:
        return
    ids = sorted({e.customer_id for e in events})
    await conn.execute(
        """
        INSERT INTO customer_traits (customer_id)
        SELECT u.customer_id FROM unnest($1::text[]) AS u(customer_id) ORDER BY 1
        ON CONFLICT (customer_id) DO NOTHING
        """,
        ids,
    )
    rows = await conn.fetch(
        """
        SELECT customer_id, traits::text AS traits, trait_times::text AS times,
               replaced_at, replaced_event_id
        FROM customer_traits WHERE customer_id = ANY($1::text[])
        ORDER BY customer_id FOR UPDATE
        """,
        ids,
    )
    stored = {
        r["customer_id"]: StoredTraits.from_row(
            orjson.loads(r["traits"]),
            orjson.loads(r["times"]),
            None if r["replaced_at"] is None else (r["replaced_at"], r["replaced_event_id"]),
        )
        for r in rows
    }
    changed = merge_events(stored, events)
    if not changed:
        return
    ids = sorted(changed)
    states = [changed[cid] for cid in ids]
    await conn.execute(
        """
        UPDATE customer_traits AS t SET traits = u.traits::jsonb, trait_times = u.times::jsonb,
            replaced_at = u.replaced_at, replaced_event_id = u.replaced_event_id,
            version = t.version + 1, updated_at = now()
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
            AS u(customer_id, traits, times, replaced_at, replaced_event_id)
        WHERE t.customer_id = u.customer_id
        """,
        ids,
        [orjson.dumps(s.values).decode() for s in states],
        [orjson.dumps(s.times_json()).decode() for s in states],
        [None if s.replaced is None else s.replaced[0] for s in states],
        [None if s.replaced is None else s.replaced[1] for s in states],
    )


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
            -- A backfill's row becomes live, due from this event: kept at the backfill's
            -- older time, it would make the live backlog look as old as the backfill's,
            -- and the backfill feeder waits while the live backlog is old.
            due_at = CASE WHEN q.cause = 'definitions' THEN EXCLUDED.due_at
                          ELSE LEAST(q.due_at, EXCLUDED.due_at) END,
            cause_event_at = GREATEST(q.cause_event_at, EXCLUDED.cause_event_at),
            cause = 'event',
            enqueued_at = now()
        """,
        ids,
        due_at,
        causes,
    )


async def record_retention(
    conn: asyncpg.Connection, source: str, retention: timedelta, setting: str
) -> None:
    """Record how long rows of `source` are kept, and the setting that says so."""
    await conn.execute(
        """
        INSERT INTO ingest_retention (source, retention, setting) VALUES ($1, $2, $3)
        ON CONFLICT (source) DO UPDATE SET retention = EXCLUDED.retention,
            setting = EXCLUDED.setting, updated_at = now()
        """,
        source,
        retention,
        setting,
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


# Verification and repair ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Drift:
    """One customer's stored aggregates against what its stored rows give."""

    customer_id: str
    # field: (stored, recomputed); interaction counts recomputed from the rows still kept are
    # lower bounds, so only a stored value below them is drift.
    fields: dict[str, tuple[Any, Any]]


_ORDER_TRUTH = """
    SELECT count(*) FILTER (WHERE placed_at IS NOT NULL AND cancelled_at IS NULL) AS n,
           COALESCE(sum(GREATEST(amount - refunded, 0))
               FILTER (WHERE placed_at IS NOT NULL AND cancelled_at IS NULL), 0) AS spend,
           min(placed_at) FILTER (WHERE cancelled_at IS NULL) AS first_at,
           max(placed_at) FILTER (WHERE cancelled_at IS NULL) AS last_at
    FROM orders WHERE orders.customer_id = u.customer_id
"""
_INTERACTION_TRUTH = """
    SELECT count(*) AS n, max(occurred_at) AS last_at,
           max(occurred_at) FILTER (WHERE type = 'add_to_cart') AS cart_at, {per_type}
    FROM interactions WHERE interactions.customer_id = u.customer_id
""".format(  # noqa: S608 - the fixed list of event types
    per_type=", ".join(f"count(*) FILTER (WHERE type = '{t}') AS {t}_n" for t in INTERACTION_TYPES)
)
_VERIFY_SQL = f"""
    SELECT u.customer_id, a.customer_id IS NOT NULL AS has_row,
           a.order_count, a.net_spend, a.first_order_at, a.last_order_at,
           a.interaction_count, a.last_interaction_at, a.last_add_to_cart_at,
           {", ".join(f"a.{c}" for c in _COUNT_COLUMNS)},
           o.n AS t_order_count, o.spend AS t_net_spend, o.first_at AS t_first_order_at,
           o.last_at AS t_last_order_at, i.n AS t_interaction_count,
           i.last_at AS t_last_interaction_at, i.cart_at AS t_last_add_to_cart_at,
           {", ".join(f"i.{t}_n AS t_{t}_count" for t in INTERACTION_TYPES)}
    FROM unnest($1::text[]) AS u(customer_id)
    LEFT JOIN customer_aggregates a ON a.customer_id = u.customer_id
    CROSS JOIN LATERAL ({_ORDER_TRUTH}) AS o
    CROSS JOIN LATERAL ({_INTERACTION_TRUTH}) AS i
    ORDER BY u.customer_id
"""  # noqa: S608 - constants only
_EXACT_FIELDS = ("order_count", "net_spend", "first_order_at", "last_order_at")
_LOWER_BOUNDS = ("interaction_count", *_COUNT_COLUMNS)
_LATEST = ("last_interaction_at", "last_add_to_cart_at")


async def customers_to_verify(conn: asyncpg.Connection, after: str, limit: int) -> list[str]:
    """The next customers in id order that have aggregates or order rows."""
    rows = await conn.fetch(
        """
        SELECT customer_id FROM (
            (SELECT customer_id FROM customer_aggregates WHERE customer_id > $1
             ORDER BY customer_id LIMIT $2)
            UNION
            (SELECT DISTINCT customer_id FROM orders WHERE customer_id > $1
             ORDER BY customer_id LIMIT $2)
        ) AS ids ORDER BY customer_id LIMIT $2
        """,
        after,
        limit,
    )
    return [r["customer_id"] for r in rows]


async def verify_customers(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> list[Drift]:
    """Compare these customers' aggregates with their order and interaction rows.

    Their aggregates rows are locked first, then read in a new statement (and so a new
    snapshot): an ingest batch changing their orders meanwhile waits, and adds its own
    exact difference after whatever a repair in this transaction writes.
    """
    await conn.execute(
        "SELECT 1 FROM customer_aggregates WHERE customer_id = ANY($1::text[])"
        " ORDER BY customer_id FOR UPDATE",
        list(customer_ids),
    )
    drifts = []
    for r in await conn.fetch(_VERIFY_SQL, list(customer_ids)):
        fields: dict[str, tuple[Any, Any]] = {}
        if not r["has_row"]:
            if r["t_order_count"] or r["t_interaction_count"]:
                fields["row"] = (None, "missing")
        else:
            for name in _EXACT_FIELDS:
                if r[name] != r[f"t_{name}"]:
                    fields[name] = (r[name], r[f"t_{name}"])
            for name in _LOWER_BOUNDS:
                if r[name] < r[f"t_{name}"]:
                    fields[name] = (r[name], r[f"t_{name}"])
            for name in _LATEST:
                truth = r[f"t_{name}"]
                if truth is not None and (r[name] is None or r[name] < truth):
                    fields[name] = (r[name], truth)
        if fields:
            drifts.append(Drift(r["customer_id"], fields))
    return drifts


async def repair_customers(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    """Set these customers' order side to what their order rows give, raise interaction
    counts and times to at least what the kept rows give, and create missing rows; call it
    after `verify_customers` in the same transaction, which locked the rows."""
    ids = list(customer_ids)
    await conn.execute(
        """
        INSERT INTO customer_aggregates (customer_id) SELECT unnest($1::text[])
        ON CONFLICT (customer_id) DO NOTHING
        """,
        ids,
    )
    raised = ", ".join(
        f"{c} = GREATEST(a.{c}, i.{c.removesuffix('_count')}_n)" for c in _COUNT_COLUMNS
    )
    await conn.execute(
        f"""
        UPDATE customer_aggregates a SET
            order_count = o.n, net_spend = o.spend,
            first_order_at = o.first_at, last_order_at = o.last_at,
            interaction_count = GREATEST(a.interaction_count, i.n),
            last_interaction_at = GREATEST(a.last_interaction_at, i.last_at),
            last_add_to_cart_at = GREATEST(a.last_add_to_cart_at, i.cart_at),
            {raised},
            version = a.version + 1, updated_at = now()
        FROM unnest($1::text[]) AS u(customer_id)
        CROSS JOIN LATERAL ({_ORDER_TRUTH}) AS o
        CROSS JOIN LATERAL ({_INTERACTION_TRUTH}) AS i
        WHERE a.customer_id = u.customer_id
        """,  # noqa: S608 - constants only
        ids,
    )


async def queue_repaired(
    conn: asyncpg.Connection, customer_ids: Sequence[str], now: datetime
) -> None:
    """Queue repaired customers for segmentation now, with cause "repair", so their change
    reasons say why they moved."""
    await conn.execute(
        """
        INSERT INTO segmentation_queue AS q (customer_id, due_at, cause)
        SELECT unnest($1::text[]), $2, 'repair'
        ON CONFLICT (customer_id) DO UPDATE SET
            due_at = LEAST(q.due_at, EXCLUDED.due_at), cause = 'repair', enqueued_at = now()
        """,
        list(customer_ids),
        now,
    )
