"""/v1/changes/stream: segment changes as Server-Sent Events, resumable by Last-Event-ID."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from services.api.auth.repository import AuditEntry
from services.api.changes import repository, service
from services.api.deps import Reader, ResourcesDep
from services.api.errors import ApiError, error_responses

router = APIRouter(prefix="/v1/changes", tags=["changes"])

_EXAMPLE = (
    "id: 981\nevent: segment.changed\n"
    'data: {"specversion":"1.0","id":"0b7e8a52-3d7a-5e55-9d57-5d0f2c8a1b11",'
    '"source":"/streamseg/segmenter","type":"io.streamseg.segment.changed.v1",'
    '"subject":"c-1042","time":"2026-01-10T08:00:00Z","datacontenttype":"application/json",'
    '"dataschema":"urn:streamseg:schema:segment_change:v1","data":{"customer_id":"c-1042",'
    '"dimension":"lifecycle","from_segment":"new","to_segment":"active","reason":"...",'
    '"cause":"time","definition_version":1,"caused_by_event_time":null,'
    '"evaluated_at":"2026-01-10T08:00:00Z","sequence":3}}\n\n'
)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`; each `data` is a CloudEvent",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EXAMPLE}},
        },
        **error_responses(401, 403, 422, 503),
    },
)
async def stream_changes(
    resources: ResourcesDep,
    who: Reader,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event id (sent by EventSource on reconnect)",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Start after this event id; default: now"),
    ] = None,
    dimension: Annotated[
        str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    ] = None,
) -> StreamingResponse:
    """Segment changes as Server-Sent Events, from `Last-Event-ID` (or `after`) onwards, while
    the key is valid."""
    if last_event_id is not None:
        if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > 18:
            raise ApiError(422, "invalid_last_event_id", "Last-Event-ID must be an event id")
        after = int(last_event_id)  # a reconnect overrides the original URL's `after`
    if after is None:
        async with resources.db.read() as conn:
            after = await repository.last_change_id(conn)
    resources.audit.record(
        AuditEntry(
            datetime.now(UTC),
            who.actor,
            who.key_id,
            "changes.stream.open",
            detail={"after": after, "dimension": dimension},
        )
    )
    settings = resources.settings
    events = service.change_events(
        resources.db,
        who,
        after,
        dimension,
        poll_seconds=settings.stream_poll_interval_ms / 1000,
        heartbeat_seconds=settings.stream_heartbeat_seconds,
        control=resources.streams,
        audit=resources.audit,
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
