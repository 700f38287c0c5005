"""/v1/segments: the definitions in force with segment sizes, and each segment's members."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.api.auth.repository import AuditEntry
from services.api.deps import Reader, ResourcesDep
from services.api.errors import error_responses
from services.api.pagination import decode_cursor, encode_cursor
from services.api.segments import repository, service
from services.api.segments.schemas import DefinitionsView, Member, MembersPage

router = APIRouter(prefix="/v1/segments", tags=["segments"])

MEMBERS_CURSOR = "m"
Name = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


@router.get("", response_model=DefinitionsView, responses=error_responses(401, 403, 404, 503))
async def list_segments(resources: ResourcesDep, who: Reader) -> DefinitionsView:
    """The definitions in force: cut-offs resolved, each segment's and audience's rule and size."""
    return await service.definitions_view(resources.db, resources.definitions)


@router.get(
    "/{dimension}/{segment}/members",
    response_model=MembersPage,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def list_members(
    dimension: Name,
    segment: Name,
    resources: ResourcesDep,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> MembersPage:
    """Customers in a segment (an audience: segment `member`), in customer_id order, by page."""
    current = await service.definitions_in_force(resources.db, resources.definitions)
    service.check_segment(current.definitions, dimension, segment)
    after = "" if cursor is None else decode_cursor(MEMBERS_CURSOR, cursor)
    async with resources.db.read() as conn:
        rows = await repository.members(conn, dimension, segment, after, limit + 1)
    items = [Member(customer_id=r["customer_id"], since=r["since"]) for r in rows[:limit]]
    resources.audit.record(
        AuditEntry(
            datetime.now(UTC),
            who.actor,
            who.key_id,
            "segment.members.read",
            detail={"dimension": dimension, "segment": segment, "count": len(items)},
        )
    )
    more = len(rows) > limit
    return MembersPage(
        dimension=dimension,
        segment=segment,
        items=items,
        next_cursor=encode_cursor(MEMBERS_CURSOR, items[-1].customer_id) if more else None,
    )
