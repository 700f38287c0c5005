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
from services.api.segments.schemas import (
    DefinitionsView,
    DimensionView,
    Member,
    MembersPage,
    SegmentView,
)

router = APIRouter(prefix="/v1/segments", tags=["segments"])

MEMBERS_CURSOR = "m"
Name = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


@router.get("", response_model=DefinitionsView, responses=error_responses(401, 403, 404, 503))
async def list_segments(resources: ResourcesDep, who: Reader) -> DefinitionsView:
    """The definitions in force: dimensions, their segments' rules, and each segment's size."""
    current = await service.definitions_in_force(resources.db, resources.definitions)
    async with resources.db.read() as conn:
        sizes = await repository.segment_sizes(conn)
    defs = current.definitions
    return DefinitionsView(
        version=current.version,
        content_hash=current.content_hash,
        loaded_at=current.loaded_at,
        description=defs.description,
        dimensions=[
            DimensionView(
                name=dim.name,
                description=dim.description,
                segments=[
                    SegmentView(
                        name=rule.name,
                        description=rule.description,
                        condition=rule.source,
                        size=sizes.get((dim.name, rule.name), 0),
                    )
                    for rule in dim.rules
                ],
            )
            for dim in defs.dimensions
        ],
    )


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
    """Customers currently in a segment, in customer_id order, a page at a time."""
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
