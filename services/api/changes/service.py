"""The change stream as Server-Sent Events, polled from segment_history.

Each event's `id` is the history row's id, which only grows, so a client that reconnects
with `Last-Event-ID` resumes exactly after the last event it saw. Caveat, stated: ids are
assigned at insert, and a transaction that commits late can make a row with a smaller id
appear after a larger one was sent; such a row is not streamed. The segmenter commits one
batch at a time, which keeps this to concurrent segmenter processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import structlog

from services.api.changes import repository
from services.api.database import Database
from services.api.errors import ApiError
from services.api.resources import StreamControl
from shared.events.segment_change import SegmentChange, encode_segment_change

log = structlog.get_logger("api")

BATCH = 500


def frame(row: asyncpg.Record) -> bytes:
    change = SegmentChange(
        customer_id=row["customer_id"],
        dimension=row["dimension"],
        from_segment=row["from_segment"],
        to_segment=row["to_segment"],
        reason=row["reason"],
        definition_version=row["definition_version"],
        caused_by_event_time=row["caused_by_event_at"],
        evaluated_at=row["evaluated_at"],
        sequence=row["sequence"],
    )
    # encode_segment_change writes compact JSON: no newline can break the `data:` line.
    return b"id: %d\nevent: segment.changed\ndata: %s\n\n" % (
        row["id"],
        encode_segment_change(change, change_id=str(row["change_id"])),
    )


async def change_events(
    db: Database,
    after_id: int,
    dimension: str | None,
    *,
    poll_seconds: float,
    heartbeat_seconds: float,
    control: StreamControl,
) -> AsyncIterator[bytes]:
    """Frames of changes after `after_id` until the server stops; the response is cancelled
    when the client disconnects."""
    yield b"retry: 2000\n: streaming changes after %d\n\n" % after_id
    last_sent = time.monotonic()
    while not control.is_stopping:
        try:
            async with db.read() as conn:
                rows = await repository.changes_after(conn, after_id, dimension, BATCH)
        except ApiError:
            rows = []  # PostgreSQL is away: keep the stream, try again after a poll
        if rows:
            yield b"".join(frame(r) for r in rows)
            after_id = rows[-1]["id"]
            last_sent = time.monotonic()
            if len(rows) == BATCH:
                continue
        elif time.monotonic() - last_sent >= heartbeat_seconds:
            yield b": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)
    log.info("change_stream_closed_for_shutdown", after_id=after_id)
