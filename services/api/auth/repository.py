"""All SQL for API keys and the audit log. Runs in the caller's unit of work; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    name: str
    key_hash: bytes
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    key_id: str | None
    action: str
    customer_id: str | None = None
    detail: dict[str, Any] | None = None


def _key(row: asyncpg.Record) -> KeyRow:
    return KeyRow(
        row["id"],
        row["name"],
        bytes(row["key_hash"]),
        tuple(row["scopes"]),
        row["created_at"],
        row["revoked_at"],
    )


_KEY_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


async def insert_key(
    conn: asyncpg.Connection, key_id: str, name: str, key_hash: bytes, scopes: Sequence[str]
) -> KeyRow:
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4)"  # noqa: S608
        f" RETURNING {_KEY_COLUMNS}",
        key_id,
        name,
        key_hash,
        list(scopes),
    )
    return _key(row)


async def find_key(conn: asyncpg.Connection, key_id: str) -> KeyRow | None:
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)  # noqa: S608
    return None if row is None else _key(row)


async def list_keys(conn: asyncpg.Connection) -> list[KeyRow]:
    rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")  # noqa: S608
    return [_key(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: str, at: datetime) -> KeyRow | None:
    """Revoke a key; a key revoked before keeps its first revocation time."""
    row = await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1"  # noqa: S608
        f" RETURNING {_KEY_COLUMNS}",
        key_id,
        at,
    )
    return None if row is None else _key(row)


async def insert_audit(conn: asyncpg.Connection, entries: Sequence[AuditEntry]) -> None:
    if not entries:
        return
    await conn.execute(
        """
        INSERT INTO audit_log (at, actor, key_id, action, customer_id, detail)
        SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[]::jsonb[])
        """,
        [e.at for e in entries],
        [e.actor for e in entries],
        [e.key_id for e in entries],
        [e.action for e in entries],
        [e.customer_id for e in entries],
        [None if e.detail is None else orjson.dumps(e.detail).decode() for e in entries],
    )


async def list_audit(
    conn: asyncpg.Connection, customer_id: str | None, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first; `before_id` continues a previous page."""
    # Two statements rather than `$1 IS NULL OR ...`, so each gets a plan that uses its index.
    after = "" if before_id is None else "AND id < $2"
    if customer_id is None:
        sql = f"WHERE true {after.replace('$2', '$1')}"
        args: list[object] = [] if before_id is None else [before_id]
    else:
        sql = f"WHERE customer_id = $1 {after}"
        args = [customer_id] if before_id is None else [customer_id, before_id]
    return list(
        await conn.fetch(
            "SELECT id, at, actor, key_id, action, customer_id, detail::text AS detail"  # noqa: S608
            f" FROM audit_log {sql} ORDER BY id DESC LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
    )
