"""The change stream as Server-Sent Events, polled from segment_history.

The stream lasts as long as its API key: each poll reads the key's state in the statement
that reads the changes, so a stream whose key was revoked ends at its next poll, and sends no
change committed after the revocation. The end is audited.

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
from datetime import UTC, datetime

import asyncpg
import structlog

from services.api.auth.audit import AuditWriter
from services.api.auth.keys import Principal
from services.api.auth.repository import AuditEntry
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
        cause=row["cause"],
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
    who: Principal,
    after_id: int,
    dimension: str | None,
    *,
    poll_seconds: float,
    heartbeat_seconds: float,
    control: StreamControl,
    audit: AuditWriter,
) -> AsyncIterator[bytes]:
    """Frames of changes after `after_id` until the server stops or `who`'s key is revoked;
    the response is cancelled when the client disconnects."""
    yield b"retry: 2000\n: streaming changes after %d\n\n" % after_id
    last_sent = time.monotonic()
    while not control.is_stopping:
        try:
            async with db.read() as conn:
                is_valid, rows = await repository.changes_for_key(
                    conn, who.key_id, after_id, dimension, BATCH
                )
        except ApiError:
            # PostgreSQL is away: keep the stream, try again after a poll. Nothing can be
            # sent meanwhile, so a revocation is still honoured before the next change.
            is_valid, rows = True, []
        if not is_valid:
            audit.record(
                AuditEntry(
                    datetime.now(UTC),
                    who.actor,
                    who.key_id,
                    "changes.stream.end",
                    detail={"reason": "key_revoked", "last_event_id": after_id},
                )
            )
            log.info("change_stream_closed_for_revoked_key", key_id=who.key_id, after_id=after_id)
            # A comment, then the end: EventSource reconnects, and its key is refused with 401.
            yield b": the API key was revoked\n\n"
            return
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
