"""/v1/admin: API keys and the audit log; every endpoint needs the `admin` scope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query

from services.api.auth import repository
from services.api.auth.keys import hash_key, new_key
from services.api.auth.repository import AuditEntry, KeyRow
from services.api.auth.schemas import AuditPage, AuditView, KeyList, KeyView, NewKey, NewKeyRequest
from services.api.deps import Admin, ResourcesDep
from services.api.errors import error_responses, not_found
from services.api.pagination import decode_int_cursor, encode_cursor
from shared.events.limits import ID_MAX_LENGTH, ID_PATTERN

router = APIRouter(prefix="/v1/admin", tags=["admin"])

AUDIT_CURSOR = "a"
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


def _view(row: KeyRow) -> KeyView:
    return KeyView(
        id=row.id,
        name=row.name,
        scopes=list(row.scopes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@router.get("/keys", response_model=KeyList, responses=error_responses(401, 403, 503))
async def list_keys(resources: ResourcesDep, who: Admin) -> KeyList:
    """Every API key, revoked ones included; never the keys themselves."""
    async with resources.db.read() as conn:
        rows = await repository.list_keys(conn)
    return KeyList(keys=[_view(r) for r in rows])


@router.post(
    "/keys", status_code=201, response_model=NewKey, responses=error_responses(401, 403, 422, 503)
)
async def create_key(body: NewKeyRequest, resources: ResourcesDep, who: Admin) -> NewKey:
    """Create a key; the response is the only time the key is shown."""
    key_id, key = new_key()
    scopes = sorted(set(body.scopes))
    async with resources.db.transaction() as conn:
        row = await repository.insert_key(conn, key_id, body.name, hash_key(key), scopes)
        await repository.insert_audit(
            conn,
            [
                AuditEntry(
                    datetime.now(UTC),
                    who.actor,
                    who.key_id,
                    "key.create",
                    detail={"created_key_id": key_id, "name": body.name, "scopes": scopes},
                )
            ],
        )
    return NewKey(**_view(row).model_dump(), key=key)


@router.delete(
    "/keys/{key_id}", response_model=KeyView, responses=error_responses(401, 403, 404, 422, 503)
)
async def revoke_key(key_id: KeyId, resources: ResourcesDep, who: Admin) -> KeyView:
    """Revoke a key: refused at once here, within `auth_cache_seconds` by other processes."""
    now = datetime.now(UTC)
    async with resources.db.transaction() as conn:
        row = await repository.revoke_key(conn, key_id, now)
        if row is None:
            raise not_found("key_not_found", f"no API key {key_id!r}")
        entry = AuditEntry(now, who.actor, who.key_id, "key.revoke", detail={"revoked": key_id})
        await repository.insert_audit(conn, [entry])
    resources.keys.forget(key_id)
    return _view(row)


@router.get("/audit", response_model=AuditPage, responses=error_responses(401, 403, 422, 503))
async def read_audit(
    resources: ResourcesDep,
    who: Admin,
    customer_id: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    """The audit log, newest first, optionally for one customer (this read is audited too)."""
    before = None if cursor is None else decode_int_cursor(AUDIT_CURSOR, cursor)
    async with resources.db.read() as conn:
        rows = await repository.list_audit(conn, customer_id, before, limit + 1)
    resources.audit.record(
        AuditEntry(datetime.now(UTC), who.actor, who.key_id, "audit.read", customer_id)
    )
    items = [
        AuditView(
            **{k: v for k, v in dict(r).items() if k != "detail"},
            detail=None if r["detail"] is None else orjson.loads(r["detail"]),
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return AuditPage(
        items=items, next_cursor=encode_cursor(AUDIT_CURSOR, str(items[-1].id)) if more else None
    )
