"""All SQL of the customer endpoints. Reads only, in the caller's unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(slots=True)
class StoredSegment:
    segment: str
    since: datetime
    reason: str
    definition_version: int


@dataclass(slots=True)
class StoredEvaluation:
    customer_id: str
    definition_version: int
    evaluated_at: datetime
    next_change_at: datetime | None
    scores: dict[str, int | None]
    segments: dict[str, StoredSegment] = field(default_factory=dict)


async def evaluations(
    conn: asyncpg.Connection, customer_ids: Sequence[str]
) -> dict[str, StoredEvaluation]:
    """Each evaluated customer's evaluation and current segments; others are left out."""
    rows = await conn.fetch(
        """
        SELECT e.customer_id, e.definition_version, e.evaluated_at, e.next_change_at, e.scores,
               s.dimension, s.segment, s.since, s.reason,
               s.definition_version AS segment_definition_version
        FROM customer_evaluations e
        LEFT JOIN customer_segments s ON s.customer_id = e.customer_id
        WHERE e.customer_id = ANY($1::text[])
        """,
        list(customer_ids),
    )
    out: dict[str, StoredEvaluation] = {}
    for r in rows:
        cid = r["customer_id"]
        evaluation = out.get(cid)
        if evaluation is None:
            evaluation = out[cid] = StoredEvaluation(
                cid,
                r["definition_version"],
                r["evaluated_at"],
                r["next_change_at"],
                _scores(r["scores"]),
            )
        if r["dimension"] is not None:
            evaluation.segments[r["dimension"]] = StoredSegment(
                r["segment"], r["since"], r["reason"], r["segment_definition_version"]
            )
    return out


def _scores(stored: Any) -> dict[str, int | None]:
    """Evaluations stored before scores existed have none. SQLAlchemy's asyncpg dialect
    decodes jsonb on its connections; a bare one returns text."""
    if stored is None:
        return {}
    return dict(orjson.loads(stored) if isinstance(stored, str | bytes) else stored)


async def history(
    conn: asyncpg.Connection, customer_id: str, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """A customer's transitions, newest first, strictly before `before_id` if given."""
    return list(
        await conn.fetch(
            """
            SELECT id, change_id, dimension, from_segment, to_segment, reason, cause,
                   definition_version, caused_by_event_at, evaluated_at, sequence
            FROM segment_history
            WHERE customer_id = $1 AND id < $2
            ORDER BY id DESC
            LIMIT $3
            """,
            customer_id,
            before_id if before_id is not None else 2**63 - 1,
            limit,
        )
    )


async def is_known(conn: asyncpg.Connection, customer_id: str) -> bool:
    """The customer has been evaluated or has a history."""
    return bool(
        await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM customer_evaluations WHERE customer_id = $1)
                OR EXISTS (SELECT 1 FROM segment_history WHERE customer_id = $1)
            """,
            customer_id,
        )
    )
