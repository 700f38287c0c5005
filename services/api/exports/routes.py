"""/v1/segments/{dimension}/{segment}/members/export: a segment's or an audience's members,
all of them, as one streamed CSV or NDJSON file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from services.api.auth.repository import AuditEntry
from services.api.deps import Reader, ResourcesDep
from services.api.errors import ApiError, error_responses
from services.api.exports import service
from services.api.exports.service import Format
from services.api.segments import service as segments
from services.api.segments.routes import Name

log = structlog.get_logger("api")
router = APIRouter(prefix="/v1/segments", tags=["segments"])

_EXAMPLE_CSV = "customer_id,since,reason\r\nc-1042,2026-02-01T09:30:00.000000Z,spend >= 428\r\n"
_EXAMPLE_NDJSON = '{"customer_id":"c-1042","since":"2026-02-01T09:30:00.000000Z","reason":"..."}\n'
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every member, in customer_id order: `customer_id`, `since` (ISO 8601, "
        "UTC) and `reason`; CSV with a header row, or one JSON object per line",
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": _EXAMPLE_CSV},
            "application/x-ndjson": {"schema": {"type": "string"}, "example": _EXAMPLE_NDJSON},
        },
    }
}


@router.get(
    "/{dimension}/{segment}/members/export",
    response_class=StreamingResponse,
    responses=_OK | error_responses(401, 403, 404, 406, 422, 503),
)
async def export_members(
    dimension: Name,
    segment: Name,
    request: Request,
    resources: ResourcesDep,
    who: Reader,
    format: Annotated[
        Format | None, Query(description="`csv` or `ndjson`; else chosen by `Accept`")
    ] = None,
) -> StreamingResponse:
    """Every member of a segment (an audience: segment `member`) as CSV or NDJSON, streamed."""
    kind = service.choose_format(format, request.headers.get("accept"))
    current = await segments.definitions_in_force(resources.db, resources.definitions)
    segments.check_segment(current.definitions, dimension, segment)
    members = service.MemberChunks(
        resources.db, dimension, segment, resources.settings.export_chunk_rows
    )
    chunks = members.chunks()
    try:
        # The first chunk before the answer starts: a PostgreSQL that is away is still a 503.
        first = await anext(chunks, None)
    except BaseException:
        await members.close()
        raise
    started = datetime.now(UTC)

    async def body() -> AsyncIterator[bytes]:
        count, is_complete = 0, False
        try:
            head = service.encode_chunk(kind, first or [], header=True)
            if head:
                yield head
            count = len(first or [])
            rows: list[asyncpg.Record]
            async for rows in chunks:
                yield service.encode_chunk(kind, rows, header=False)
                count += len(rows)
            is_complete = True
        except ApiError as exc:
            # The status is sent: the connection is closed without the last chunk, so the
            # client sees an incomplete transfer, never a file that looks whole.
            log.warning("export_interrupted", dimension=dimension, segment=segment, rows=count)
            raise RuntimeError(f"export interrupted after {count} rows: {exc.detail}") from exc
        finally:
            await members.close()
            await chunks.aclose()
            detail = {
                "dimension": dimension,
                "segment": segment,
                "format": kind.name,
                "count": count,
                "complete": is_complete,
            }
            resources.audit.record(
                AuditEntry(started, who.actor, who.key_id, "segment.members.export", None, detail)
            )

    filename = f"{dimension}-{segment}-members.{kind.extension}"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(body(), media_type=kind.media_type, headers=headers)
