"""All SQL of the traits endpoints: one read, in the caller's unit of work. Writes go
through Kafka and ingest, never here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class StoredRow:
    traits: dict[str, Any]
    trait_times: dict[str, dict[str, str]]
    version: int
    updated_at: datetime


async def stored_traits(conn: asyncpg.Connection, customer_id: str) -> StoredRow | None:
    row = await conn.fetchrow(
        "SELECT traits::text AS traits, trait_times::text AS times, version, updated_at"
        " FROM customer_traits WHERE customer_id = $1",
        customer_id,
    )
    if row is None:
        return None
    return StoredRow(
        orjson.loads(row["traits"]), orjson.loads(row["times"]), row["version"], row["updated_at"]
    )
