"""POST /v1/events: events over HTTP, for the shop's systems that cannot speak Kafka.

Not applied here: every valid event of the batch is produced to the topic ingest reads it
from, and ingest applies it as it does any other producer's. So the answer is 202 once
Kafka has acknowledged every valid event, and 503 when it has not, in which case the batch
as a whole was not accepted and is to be sent again, unchanged: some of its events may
have reached Kafka, and the retry's copies of them are counted once, since ingest
deduplicates by event id.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from services.api.auth.repository import AuditEntry
from services.api.deps import EventsWriter, ResourcesDep
from services.api.errors import ApiError, error_responses
from services.api.events.schemas import EventsAccepted, request_body
from services.api.metrics import EVENTS
from services.api.publisher import PublishFailedError

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=EventsAccepted,
    responses=error_responses(401, 403, 413, 422, 503),
    openapi_extra=request_body(),
)
async def post_events(
    request: Request, resources: ResourcesDep, who: EventsWriter
) -> EventsAccepted:
    """Send 1 to 1,000 events (1 MiB at most); 202 once Kafka has every valid one."""
    now = datetime.now(UTC)
    screened = resources.intake.screen(await request.body(), now)
    settings = resources.settings
    try:
        await resources.kafka.publish(screened.records, settings.events_produce_timeout_ms / 1000)
    except PublishFailedError as exc:
        EVENTS.labels("unavailable").inc(len(screened.records))
        raise ApiError(
            503,
            "kafka_unavailable",
            f"the batch was not accepted: {exc}; send it again unchanged (with the same "
            "event ids, so that events Kafka did take are counted once)",
            {"Retry-After": "1"},
        ) from exc
    EVENTS.labels("accepted").inc(len(screened.records))
    EVENTS.labels("rejected").inc(len(screened.rejections))
    detail = {
        "accepted": len(screened.records),
        "rejected": len(screened.rejections),
        "types": dict(sorted(screened.types.items())),
    }
    resources.audit.record(AuditEntry(now, who.actor, who.key_id, "events.write", None, detail))
    return EventsAccepted(
        accepted=len(screened.records),
        rejected=len(screened.rejections),
        rejections=screened.rejections,
    )
