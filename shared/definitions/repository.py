"""All SQL on stored definitions. Functions run in the caller's transaction, never commit.

Versions point to contents (`definition_contents`), so one content can be in force under
several versions: a rollback is an activation of an old content. `definitions_in_force`
holds one row; an activation changes it only from the version it names (`replaces`), under
the row's lock, and every evaluation's commit reads it FOR SHARE (see
services/segmenter/worker.py): so no evaluation made under an older version commits after
an activation has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

Publish = Literal["each", "none", "summary"]
PUBLISH_POLICIES: tuple[Publish, ...] = ("each", "none", "summary")
_LOCK_KEY = "hashtext(current_schema() || ':' || 'definitions')"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    version: int
    content_hash: str
    content: str
    activated_at: datetime
    activated_by: str
    note: str
    replaces: int | None
    publish: Publish
    changed_dimensions: tuple[str, ...]


class ActivationConflictError(Exception):
    """Another activation committed since the version this one names as the one it replaces."""

    def __init__(self, replaces: int | None, in_force: int | None) -> None:
        super().__init__(
            f"version {in_force} is in force, not {replaces}: another activation committed"
            " in between; preview against it and activate again"
        )
        self.replaces = replaces
        self.in_force = in_force


_VERSION_COLUMNS = """
    d.version, d.content_hash, c.content, d.activated_at, d.activated_by, d.note,
    d.replaces, d.publish, d.changed_dimensions
"""


def _stored(row: asyncpg.Record) -> StoredVersion:
    return StoredVersion(
        version=row["version"],
        content_hash=row["content_hash"],
        content=row["content"],
        activated_at=row["activated_at"],
        activated_by=row["activated_by"],
        note=row["note"],
        replaces=row["replaces"],
        publish=row["publish"],
        changed_dimensions=tuple(row["changed_dimensions"]),
    )


async def in_force(conn: asyncpg.Connection) -> StoredVersion | None:
    """The version in force, or None before any was stored."""
    row = await conn.fetchrow(
        f"""
        SELECT {_VERSION_COLUMNS}
        FROM definitions_in_force f
        JOIN segment_definitions d ON d.version = f.version
        JOIN definition_contents c ON c.content_hash = d.content_hash
        """  # noqa: S608 - constant columns
    )
    return None if row is None else _stored(row)


async def version_in_force(conn: asyncpg.Connection) -> int | None:
    """Just the number in force: cheap enough to poll."""
    value = await conn.fetchval("SELECT version FROM definitions_in_force")
    return None if value is None else int(value)


async def get_version(conn: asyncpg.Connection, version: int) -> StoredVersion | None:
    row = await conn.fetchrow(
        f"""
        SELECT {_VERSION_COLUMNS}
        FROM segment_definitions d JOIN definition_contents c USING (content_hash)
        WHERE d.version = $1
        """,  # noqa: S608 - constant columns
        version,
    )
    return None if row is None else _stored(row)


async def list_versions(
    conn: asyncpg.Connection, before: int | None, limit: int
) -> list[StoredVersion]:
    """Versions newest first, strictly below `before` when given."""
    rows = await conn.fetch(
        f"""
        SELECT {_VERSION_COLUMNS}
        FROM segment_definitions d JOIN definition_contents c USING (content_hash)
        WHERE $1::int IS NULL OR d.version < $1
        ORDER BY d.version DESC LIMIT $2
        """,  # noqa: S608 - constant columns
        before,
        limit,
    )
    return [_stored(r) for r in rows]


async def seed(
    conn: asyncpg.Connection, content: str, content_hash: str, actor: str
) -> tuple[StoredVersion, bool]:
    """Store `content` as version 1 if nothing is in force yet; returns the version in force
    and whether it was this seed. Several processes starting at once agree: one seeds."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    current = await in_force(conn)
    if current is not None:
        return current, False
    stored = await _insert_version(
        conn, content, content_hash, actor, "seeded at start", None, "each", ()
    )
    await conn.execute("INSERT INTO definitions_in_force (version) VALUES ($1)", stored.version)
    return stored, True


async def activate(
    conn: asyncpg.Connection,
    content: str,
    content_hash: str,
    *,
    replaces: int | None,
    actor: str,
    note: str,
    publish: Publish,
    changed_dimensions: Sequence[str],
    customers: int,
    copy_population: bool,
) -> StoredVersion:
    """Put `content` in force as a new version replacing `replaces`, or raise
    `ActivationConflictError` if that is no longer the version in force.

    When `changed_dimensions` is not empty, a backfill re-evaluates the population under the
    new version (`customers` is its expected size, for progress); a backfill still running
    is superseded by it. With `copy_population`, the newest population stats of the replaced
    version are kept for the new one (their inputs did not change), so no evaluation under
    the new version has to wait for a recompute."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    # FOR UPDATE: from here, evaluations that want to commit wait for this transaction.
    current = await conn.fetchval("SELECT version FROM definitions_in_force FOR UPDATE")
    if current != replaces:
        raise ActivationConflictError(replaces, current)
    running = await conn.fetch(
        "SELECT version FROM definition_backfills WHERE completed_at IS NULL"
        " AND superseded_by IS NULL"
    )
    stored = await _insert_version(
        conn, content, content_hash, actor, note, replaces, publish, changed_dimensions
    )
    if current is None:
        await conn.execute("INSERT INTO definitions_in_force (version) VALUES ($1)", stored.version)
    else:
        await conn.execute("UPDATE definitions_in_force SET version = $1", stored.version)
    if changed_dimensions or running:
        await conn.execute(
            "UPDATE definition_backfills SET superseded_by = $1"
            " WHERE completed_at IS NULL AND superseded_by IS NULL",
            stored.version,
        )
        await conn.execute(
            "INSERT INTO definition_backfills (version, total) VALUES ($1, $2)",
            stored.version,
            customers,
        )
    if copy_population and replaces is not None:
        await conn.execute(
            """
            INSERT INTO population_stats (definition_version, computed_at, customers, stats)
            SELECT $1, computed_at, customers, stats FROM population_stats
            WHERE definition_version = $2 ORDER BY id DESC LIMIT 1
            """,
            stored.version,
            replaces,
        )
    return stored


async def _insert_version(
    conn: asyncpg.Connection,
    content: str,
    content_hash: str,
    actor: str,
    note: str,
    replaces: int | None,
    publish: Publish,
    changed_dimensions: Sequence[str],
) -> StoredVersion:
    """Callers hold the definitions lock, so max + 1 is safe; a serial would leave gaps in
    the numbers users see (rolled-back activations, and the 32 a crash skips)."""
    await conn.execute(
        "INSERT INTO definition_contents (content_hash, content) VALUES ($1, $2)"
        " ON CONFLICT (content_hash) DO NOTHING",
        content_hash,
        content,
    )
    row = await conn.fetchrow(
        """
        INSERT INTO segment_definitions
            (version, content_hash, activated_by, note, replaces, publish, changed_dimensions)
        SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4, $5, $6::text[]
        FROM segment_definitions
        RETURNING version, activated_at
        """,
        content_hash,
        actor,
        note,
        replaces,
        publish,
        list(changed_dimensions),
    )
    stored_content = await conn.fetchval(
        "SELECT content FROM definition_contents WHERE content_hash = $1", content_hash
    )
    return StoredVersion(
        version=row["version"],
        content_hash=content_hash,
        content=stored_content,
        activated_at=row["activated_at"],
        activated_by=actor,
        note=note,
        replaces=replaces,
        publish=publish,
        changed_dimensions=tuple(changed_dimensions),
    )


async def customer_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM customer_aggregates"))


# Backfills --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Backfill:
    version: int
    after_customer: str
    total: int
    queued: int
    started_at: datetime
    fed_at: datetime | None
    completed_at: datetime | None
    superseded_by: int | None


async def get_backfill(conn: asyncpg.Connection, version: int) -> Backfill | None:
    row = await conn.fetchrow("SELECT * FROM definition_backfills WHERE version = $1", version)
    return None if row is None else Backfill(**dict(row))


async def running_backfill(conn: asyncpg.Connection) -> Backfill | None:
    """The backfill of the version in force, if it has not completed."""
    row = await conn.fetchrow(
        """
        SELECT b.* FROM definition_backfills b JOIN definitions_in_force f USING (version)
        WHERE b.completed_at IS NULL
        """
    )
    return None if row is None else Backfill(**dict(row))


async def feed_backfill(
    conn: asyncpg.Connection, version: int, after: str, limit: int, due_at: datetime
) -> int:
    """Queue the next `limit` customers after `after` for re-evaluation (cause definitions)
    and move the backfill's cursor past them; returns how many were walked (0: all fed).

    A customer already due keeps its row: it is evaluated under the version in force
    anyway, and a live event's row must keep its place ahead of the backfill. A wake-up
    due later becomes a backfill row due now."""
    row = await conn.fetchrow(
        """
        WITH next AS (
            SELECT customer_id FROM customer_aggregates WHERE customer_id > $1
            ORDER BY customer_id LIMIT $2
        ), queued AS (
            INSERT INTO segmentation_queue AS q (customer_id, due_at, cause)
            SELECT customer_id, $3, 'definitions' FROM next
            ON CONFLICT (customer_id) DO UPDATE SET
                due_at = EXCLUDED.due_at, cause = 'definitions', cause_event_at = NULL
            WHERE q.due_at > EXCLUDED.due_at
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM next) AS walked, (SELECT max(customer_id) FROM next) AS last,
               (SELECT count(*) FROM queued) AS queued
        """,
        after,
        limit,
        due_at,
    )
    walked = int(row["walked"])
    if walked:
        await conn.execute(
            "UPDATE definition_backfills SET after_customer = $2, queued = queued + $3"
            " WHERE version = $1",
            version,
            row["last"],
            walked,
        )
    else:
        await conn.execute(
            "UPDATE definition_backfills SET fed_at = coalesce(fed_at, now()) WHERE version = $1",
            version,
        )
    return walked


async def backfill_pending(conn: asyncpg.Connection) -> int:
    """Re-evaluations queued by a backfill and not yet done."""
    return int(
        await conn.fetchval("SELECT count(*) FROM segmentation_queue WHERE cause = 'definitions'")
    )


async def complete_backfill(conn: asyncpg.Connection, version: int) -> bool:
    """Mark the backfill completed; False if it already was (another process did it)."""
    status = await conn.execute(
        "UPDATE definition_backfills SET completed_at = now()"
        " WHERE version = $1 AND completed_at IS NULL",
        version,
    )
    return bool(status.endswith(" 1"))


async def transition_counts(conn: asyncpg.Connection, version: int) -> list[asyncpg.Record]:
    """The backfill's changes of `version`: (dimension, from_segment, to_segment, n)."""
    return list(
        await conn.fetch(
            """
            SELECT dimension, from_segment, to_segment, count(*) AS n FROM segment_history
            WHERE definition_version = $1 AND cause = 'definitions'
            GROUP BY 1, 2, 3 ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST
            """,
            version,
        )
    )


# Previews ---------------------------------------------------------------------------------
PreviewStatus = Literal["pending", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Preview:
    id: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    status: PreviewStatus
    content_hash: str
    content: str
    base_version: int
    samples: int
    as_of: datetime | None
    done: int
    total: int | None
    claimed_by: str | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


def _preview(row: asyncpg.Record) -> Preview:
    data = dict(row)
    data["id"] = str(data["id"])
    result = data["result"]
    data["result"] = orjson.loads(result) if isinstance(result, str | bytes) else result
    return Preview(**data)


async def create_preview(
    conn: asyncpg.Connection,
    preview_id: str,
    *,
    actor: str,
    content: str,
    content_hash: str,
    base_version: int,
    samples: int,
    keep_seconds: float,
) -> Preview:
    row = await conn.fetchrow(
        """
        INSERT INTO definition_previews
            (id, created_by, expires_at, content, content_hash, base_version, samples)
        VALUES ($1::uuid, $2, now() + make_interval(secs => $3), $4, $5, $6, $7)
        RETURNING *
        """,
        preview_id,
        actor,
        keep_seconds,
        content,
        content_hash,
        base_version,
        samples,
    )
    return _preview(row)


async def get_preview(conn: asyncpg.Connection, preview_id: str) -> Preview | None:
    """A preview that has not expired."""
    row = await conn.fetchrow(
        "SELECT * FROM definition_previews WHERE id = $1::uuid AND expires_at > now()", preview_id
    )
    return None if row is None else _preview(row)


async def cancel_preview(conn: asyncpg.Connection, preview_id: str) -> Preview | None:
    """Cancel a pending or running preview (a finished one is left as it is)."""
    row = await conn.fetchrow(
        """
        UPDATE definition_previews SET status = 'cancelled', finished_at = now()
        WHERE id = $1::uuid AND status IN ('pending', 'running') RETURNING *
        """,
        preview_id,
    )
    return None if row is None else _preview(row)


async def claim_preview(
    conn: asyncpg.Connection, worker: str, stale_seconds: float
) -> Preview | None:
    """Take the oldest pending preview, or a running one whose worker stopped beating."""
    row = await conn.fetchrow(
        """
        UPDATE definition_previews p SET status = 'running', claimed_by = $1,
            heartbeat_at = now(), done = 0
        WHERE p.id = (
            SELECT id FROM definition_previews
            WHERE expires_at > now() AND (status = 'pending' OR status = 'running'
                AND heartbeat_at < now() - make_interval(secs => $2))
            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
        )
        RETURNING *
        """,
        worker,
        stale_seconds,
    )
    return None if row is None else _preview(row)


async def preview_progress(
    conn: asyncpg.Connection, preview_id: str, worker: str, done: int, total: int, as_of: datetime
) -> bool:
    """Record progress; False when the preview was cancelled or taken over (stop then)."""
    status = await conn.execute(
        """
        UPDATE definition_previews SET done = $3, total = $4, as_of = $5, heartbeat_at = now()
        WHERE id = $1::uuid AND status = 'running' AND claimed_by = $2
        """,
        preview_id,
        worker,
        done,
        total,
        as_of,
    )
    return bool(status.endswith(" 1"))


async def finish_preview(
    conn: asyncpg.Connection,
    preview_id: str,
    worker: str,
    *,
    result: dict[str, Any] | None,
    error: str | None,
) -> bool:
    status = await conn.execute(
        """
        UPDATE definition_previews
        SET status = CASE WHEN $4::text IS NULL THEN 'done' ELSE 'failed' END,
            result = $3::text::jsonb, error = $4, finished_at = now(), heartbeat_at = now()
        WHERE id = $1::uuid AND status = 'running' AND claimed_by = $2
        """,
        preview_id,
        worker,
        None if result is None else orjson.dumps(result).decode(),
        error,
    )
    return bool(status.endswith(" 1"))


async def delete_expired_previews(conn: asyncpg.Connection) -> int:
    status = await conn.execute("DELETE FROM definition_previews WHERE expires_at <= now()")
    return int(status.split()[-1])
