"""All of the segmenter's SQL. Functions run in the caller's transaction and never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.segmenter.queue import Due
from shared.db.literals import int_array, text_array, timestamp_array
from shared.facts import FactsPlan, read_facts
from shared.segmentation import Assignment, CustomerFacts


@dataclass(frozen=True, slots=True)
class State:
    """A customer's evaluation bookkeeping and current assignments."""

    version: int
    change_sequence: int
    assignments: dict[str, Assignment]
    reasons: dict[str, str]
    # Change ids derive from it (shared/events/segment_change.py); None: no evaluation is
    # stored, a new customer or one erased, whose first evaluation starts a new incarnation.
    incarnation: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    change_id: str
    customer_id: str
    dimension: str
    from_segment: str | None
    to_segment: str | None
    reason: str
    cause: str
    definition_version: int
    caused_by_event_at: datetime | None
    evaluated_at: datetime
    sequence: int


async def latest_population_stats(
    conn: asyncpg.Connection, definition_version: int
) -> tuple[int, dict[str, Any]] | None:
    """The newest stats computed for these definitions: (id, stats)."""
    row = await conn.fetchrow(
        """
        SELECT id, stats FROM population_stats WHERE definition_version = $1
        ORDER BY id DESC LIMIT 1
        """,
        definition_version,
    )
    if row is None:
        return None
    # SQLAlchemy's asyncpg dialect installs a JSON codec on its connections; a bare asyncpg
    # connection returns text. Accept both.
    stats = row["stats"]
    return row["id"], orjson.loads(stats) if isinstance(stats, str | bytes) else stats


async def save_population_stats(
    conn: asyncpg.Connection,
    definition_version: int,
    computed_at: datetime,
    customers: int,
    stats: dict[str, Any],
) -> int:
    return int(
        await conn.fetchval(
            """
            INSERT INTO population_stats (definition_version, computed_at, customers, stats)
            VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id
            """,
            definition_version,
            computed_at,
            customers,
            orjson.dumps(stats).decode(),
        )
    )


async def load_customers(
    conn: asyncpg.Connection, customer_ids: Sequence[str], now: datetime, plan: FactsPlan
) -> dict[str, CustomerFacts]:
    """Facts as of `now` of each customer that has aggregates, read without folding
    anything in (previews, the population job): the read model's values, unchanged."""
    return (await read_facts(conn, customer_ids, now, plan)).facts


@dataclass(frozen=True, slots=True)
class Leased:
    """One leased customer as read for evaluation: its queue row, facts and state."""

    due: Due
    has_facts: bool  # False: no aggregates (erased, or queued before they committed)
    state: State


_BATCH_SQL = """
    SELECT q.customer_id, q.due_at, q.cause, q.cause_event_at, q.xmin::text AS row_version,
           a.customer_id IS NOT NULL AS has_facts,
           e.version, e.change_sequence, e.incarnation::text AS incarnation,
           s.dimensions, s.segments, s.sinces, s.reasons
    FROM segmentation_queue q
    LEFT JOIN customer_aggregates a ON a.customer_id = q.customer_id
    LEFT JOIN customer_evaluations e ON e.customer_id = q.customer_id
    LEFT JOIN LATERAL (
        SELECT array_agg(dimension) AS dimensions, array_agg(segment) AS segments,
               array_agg(since) AS sinces, array_agg(reason) AS reasons
        FROM customer_segments WHERE customer_id = q.customer_id
    ) s ON e.customer_id IS NOT NULL
    WHERE q.customer_id = ANY($1::text[])
    ORDER BY q.customer_id
"""


async def load_leased(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> list[Leased]:
    """Queue rows (with their versions) and state of leased customers, in customer order.

    Read before their facts (shared/facts): a queue row version read here vouches for facts
    at least as new (see queue.settle); a row that moved meanwhile keeps its customer
    queued. Customers whose queue row is gone are left out."""
    out = []
    for r in await conn.fetch(_BATCH_SQL, list(customer_ids)):
        due = Due(r["customer_id"], r["due_at"], r["cause"], r["cause_event_at"], r["row_version"])
        state = State(0, 0, {}, {})
        if r["version"] is not None:
            state = State(r["version"], r["change_sequence"], {}, {}, r["incarnation"])
            for dimension, segment, since, reason in zip(
                r["dimensions"] or (),
                r["segments"] or (),
                r["sinces"] or (),
                r["reasons"] or (),
                strict=True,
            ):
                state.assignments[dimension] = Assignment(segment, since)
                state.reasons[dimension] = reason
        out.append(Leased(due, bool(r["has_facts"]), state))
    return out


@dataclass(frozen=True, slots=True)
class Saved:
    evaluations: int  # how many evaluations were written
    population_id: int | None  # the newest population stats of the definitions, as of then
    definition_version: int | None  # the version in force, read FOR SHARE


async def save_state(
    conn: asyncpg.Connection,
    evaluations: Sequence[tuple[str, int, int, int, datetime, datetime | None, str, str]],
    segments: Sequence[tuple[str, str, str, datetime, str, int, datetime]],
    removed: Sequence[tuple[str, str]],
    definition_version: int,
) -> Saved:
    """Write evaluations and changed segments in one statement (one round trip), and read
    the id of the newest population stats of `definition_version` in the same snapshot.

    evaluations: (customer_id, version, change_sequence, definition_version, evaluated_at,
    next_change_at, incarnation, scores as JSON); segments: (customer_id, dimension, segment,
    since, reason, definition_version, evaluated_at); removed: (customer_id, dimension) of
    dimensions no longer defined. A version is written only over the one before it, of
    the same incarnation (the one the change ids were derived from), which a first
    evaluation stores. How many evaluations were written tells the caller that no other
    evaluation got in between; the stats id, that none were stored since it read its own.

    The version in force is read FOR SHARE: an activation's update of it waits for this
    transaction, and once one has committed this read returns the new version, so the
    caller rolls back whatever it evaluated under the old one."""
    if not evaluations:
        return Saved(0, None, None)
    row = await conn.fetchrow(
        """
        WITH fence AS (
            SELECT version FROM definitions_in_force FOR SHARE
        ), gone AS (
            DELETE FROM customer_segments s
            USING unnest($17::text::text[], $18::text::text[]) AS r(customer_id, dimension)
            WHERE s.customer_id = r.customer_id AND s.dimension = r.dimension
        ), segments AS (
            INSERT INTO customer_segments AS s (customer_id, dimension, segment, since, reason,
                                                definition_version, evaluated_at)
            SELECT * FROM unnest($8::text::text[], $9::text::text[], $10::text::text[],
                                 $11::text::timestamptz[], $12::text::text[], $13::text::int[],
                                 $14::text::timestamptz[])
            ON CONFLICT (customer_id, dimension) DO UPDATE SET
                segment = EXCLUDED.segment, since = EXCLUDED.since, reason = EXCLUDED.reason,
                definition_version = EXCLUDED.definition_version,
                evaluated_at = EXCLUDED.evaluated_at
        ), evaluations AS (
            INSERT INTO customer_evaluations AS e (customer_id, version, change_sequence,
                                                   definition_version, evaluated_at,
                                                   next_change_at, incarnation, scores)
            SELECT c, v, q, d, t, n, i, s::jsonb
            FROM unnest($1::text::text[], $2::text::bigint[], $3::text::bigint[],
                        $4::text::int[], $5::text::timestamptz[], $6::text::timestamptz[],
                        $7::text::uuid[], $16::text::text[]) AS u(c, v, q, d, t, n, i, s)
            ON CONFLICT (customer_id) DO UPDATE SET
                version = EXCLUDED.version,
                change_sequence = EXCLUDED.change_sequence,
                definition_version = EXCLUDED.definition_version,
                evaluated_at = EXCLUDED.evaluated_at,
                next_change_at = EXCLUDED.next_change_at,
                scores = EXCLUDED.scores
            WHERE e.version = EXCLUDED.version - 1 AND e.incarnation = EXCLUDED.incarnation
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM evaluations) AS written,
               (SELECT id FROM population_stats WHERE definition_version = $15
                ORDER BY id DESC LIMIT 1) AS population_id,
               (SELECT version FROM fence) AS in_force
        """,
        text_array([e[0] for e in evaluations]),
        int_array([e[1] for e in evaluations]),
        int_array([e[2] for e in evaluations]),
        int_array([e[3] for e in evaluations]),
        timestamp_array([e[4] for e in evaluations]),
        timestamp_array([e[5] for e in evaluations]),
        text_array([e[6] for e in evaluations]),
        text_array([s[0] for s in segments]),
        text_array([s[1] for s in segments]),
        text_array([s[2] for s in segments]),
        timestamp_array([s[3] for s in segments]),
        text_array([s[4] for s in segments]),
        int_array([s[5] for s in segments]),
        timestamp_array([s[6] for s in segments]),
        definition_version,
        text_array([e[7] for e in evaluations]),
        text_array([r[0] for r in removed]),
        text_array([r[1] for r in removed]),
    )
    return Saved(int(row["written"]), row["population_id"], row["in_force"])


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists, for unnest (empty lists when there are no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


# Advisory locks are per database, and one database can hold several StreamSeg schemas
# (tests do, so can staging and production): each lock is named after the schema too.
_LOCK_KEY = "hashtext(current_schema() || ':' || $1)"


async def lock_history(conn: asyncpg.Connection) -> None:
    """Serialise history inserts until this transaction ends (see the evaluator)."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})", "history")


async def try_lock(conn: asyncpg.Connection, name: str, *, session: bool = False) -> bool:
    """Take the schema's advisory lock `name` if free: for the session, or this transaction."""
    kind = "pg_try_advisory_lock" if session else "pg_try_advisory_xact_lock"
    return bool(await conn.fetchval(f"SELECT {kind}({_LOCK_KEY})", name))


async def unlock(conn: asyncpg.Connection, name: str) -> None:
    """Release a session advisory lock taken with `try_lock(..., session=True)`."""
    await conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY})", name)


async def insert_changes(
    conn: asyncpg.Connection, history: Sequence[HistoryRow], payloads: Sequence[bytes | None]
) -> None:
    """History rows and their outbox records, in change order, in the caller's transaction.

    COPY, because a busy batch holds thousands of changes and COPY's binary encoding costs a
    fraction of binding them as arrays.
    """
    if not history:
        return
    await conn.copy_records_to_table(
        "segment_history",
        columns=HISTORY_COLUMNS,
        records=[
            (
                uuid.UUID(h.change_id),
                h.customer_id,
                h.dimension,
                h.from_segment,
                h.to_segment,
                h.reason,
                h.cause,
                h.definition_version,
                h.caused_by_event_at,
                h.evaluated_at,
                h.sequence,
            )
            for h in history
        ],
    )
    published = [
        (h.customer_id, uuid.UUID(h.change_id), payload)
        for h, payload in zip(history, payloads, strict=True)
        if payload is not None
    ]
    if published:
        await conn.copy_records_to_table(
            "segment_outbox", columns=("customer_id", "change_id", "payload"), records=published
        )


HISTORY_COLUMNS = (
    "change_id",
    "customer_id",
    "dimension",
    "from_segment",
    "to_segment",
    "reason",
    "cause",
    "definition_version",
    "caused_by_event_at",
    "evaluated_at",
    "sequence",
)


async def schedule(
    conn: asyncpg.Connection, wakeups: Sequence[tuple[str, datetime]], cause: str
) -> None:
    """Queue customers to be evaluated again at a time; an earlier entry wins."""
    if not wakeups:
        return
    await conn.execute(
        """
        INSERT INTO segmentation_queue AS q (customer_id, due_at, cause)
        SELECT c, d, $3 FROM unnest($1::text[], $2::timestamptz[]) AS u(c, d)
        ON CONFLICT (customer_id) DO UPDATE SET
            cause = CASE WHEN EXCLUDED.due_at < q.due_at THEN EXCLUDED.cause ELSE q.cause END,
            due_at = LEAST(q.due_at, EXCLUDED.due_at)
        """,
        [c for c, _ in wakeups],
        [d for _, d in wakeups],
        cause,
    )


async def customer_ids_after(conn: asyncpg.Connection, after: str, limit: int) -> list[str]:
    """Customers in id order, for jobs that walk the whole population in chunks."""
    rows = await conn.fetch(
        "SELECT customer_id FROM customer_aggregates WHERE customer_id > $1"
        " ORDER BY customer_id LIMIT $2",
        after,
        limit,
    )
    return [r["customer_id"] for r in rows]


@dataclass(frozen=True, slots=True)
class Backlog:
    due: int  # live customers due: events, wake-ups, moved cut-offs, repairs
    oldest_due_seconds: float  # how long the oldest of them has waited
    backfill_due: int  # re-evaluations a definitions activation queued, leased after those


async def backlog(conn: asyncpg.Connection, now: datetime) -> Backlog:
    """The live backlog, apart from the backfill's (which waits behind it on purpose)."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM segmentation_queue
                WHERE due_at <= $1 AND cause <> 'definitions') AS n,
               (SELECT min(due_at) FROM segmentation_queue
                WHERE due_at <= $1 AND cause <> 'definitions') AS oldest,
               (SELECT count(*) FROM segmentation_queue
                WHERE due_at <= $1 AND cause = 'definitions') AS backfill
        """,
        now,
    )
    oldest = row["oldest"]
    age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    return Backlog(int(row["n"]), age, int(row["backfill"]))


# The outbox -------------------------------------------------------------------------------
async def next_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, customer_id, change_id, payload FROM segment_outbox ORDER BY id LIMIT $1",
            limit,
        )
    )


async def delete_outbox(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    await conn.execute("DELETE FROM segment_outbox WHERE id = ANY($1::bigint[])", list(ids))


async def outbox_size(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM segment_outbox"))


async def outbox_age_seconds(conn: asyncpg.Connection) -> float:
    """How long the oldest record not yet acknowledged by Kafka has waited (0: none), by
    PostgreSQL's clock, which stamped it (created_at)."""
    age = await conn.fetchval(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM segment_outbox"
        " ORDER BY id LIMIT 1"
    )
    return 0.0 if age is None else max(0.0, float(age))


# Cache repairs ----------------------------------------------------------------------------
async def queue_cache_repairs(
    conn: asyncpg.Connection, versions: Sequence[tuple[str, int]]
) -> None:
    """Queue (customer id, committed version) for the repair loop; the higher version wins."""
    await conn.execute(
        """
        INSERT INTO cache_repairs AS r (customer_id, version)
        SELECT * FROM unnest($1::text[], $2::bigint[])
        ON CONFLICT (customer_id) DO UPDATE SET version = GREATEST(r.version, EXCLUDED.version)
        """,
        *_columns(versions, 2),
    )


async def claim_cache_repairs(conn: asyncpg.Connection, limit: int) -> list[tuple[str, int]]:
    """Lock up to `limit` queued repairs until this transaction ends; others' are skipped."""
    rows = await conn.fetch(
        "SELECT customer_id, version FROM cache_repairs ORDER BY customer_id LIMIT $1"
        " FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [(r["customer_id"], r["version"]) for r in rows]


async def delete_cache_repairs(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    await conn.execute(
        "DELETE FROM cache_repairs WHERE customer_id = ANY($1::text[])", list(customer_ids)
    )


# Population statistics, their inputs ------------------------------------------------------
async def population_stats_customers(conn: asyncpg.Connection, stats_id: int) -> int | None:
    """How many customers the stats `stats_id` were computed from (None: no such stats)."""
    customers = await conn.fetchval(
        "SELECT customers FROM population_stats WHERE id = $1", stats_id
    )
    return None if customers is None else int(customers)


# Previews ---------------------------------------------------------------------------------
async def current_assignments(
    conn: asyncpg.Connection, customer_ids: Sequence[str]
) -> dict[str, dict[str, Assignment]]:
    """The stored segments of each customer that has an evaluation, as `previous` for the
    next one. As in `load_leased`, a customer without a stored evaluation has none."""
    # The range bounds the scan: on `ANY` alone, with thousands of ids, the planner joins
    # whole-table scans (measured: 10 times slower for 2,000 of 200,000 customers). One row
    # of arrays per customer, as in load_leased: a quarter of the rows to decode.
    rows = await conn.fetch(
        """
        SELECT e.customer_id, array_agg(s.dimension), array_agg(s.segment), array_agg(s.since)
        FROM customer_evaluations e JOIN customer_segments s USING (customer_id)
        WHERE e.customer_id = ANY($1::text[])
          AND e.customer_id >= (SELECT min(c) FROM unnest($1::text[]) AS c)
          AND e.customer_id <= (SELECT max(c) FROM unnest($1::text[]) AS c)
        GROUP BY e.customer_id
        """,
        list(customer_ids),
    )
    return {
        cid: dict(zip(dimensions, map(Assignment, segments, sinces), strict=True))
        for cid, dimensions, segments, sinces in rows
    }


async def import_publish_policy(conn: asyncpg.Connection) -> str:
    """The publish policy for changes with cause "import": that of the import run queued
    last and not yet complete (services/importer), "each" if there is none."""
    policy: str | None = await conn.fetchval(
        "SELECT publish FROM import_runs WHERE queued_at IS NOT NULL AND completed_at IS NULL"
        " ORDER BY queued_at DESC LIMIT 1"
    )
    return policy or "each"
