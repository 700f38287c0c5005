"""Bodies of `POST /v1/events`.

The request is read by the endpoint itself (service.py): each event stays the bytes it was
sent as, checked by the contract's own decoders and produced as is. Its JSON Schema is the
contracts'; the answer is a pydantic model, as elsewhere in the API.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from services.api import openapi
from shared.events import CustomerEvent, Event

MAX_BATCH_EVENTS: Final = 1000

_EXAMPLE = {
    "events": [
        {
            "type": "order_placed",
            "event_id": "shop:order:A-1001",
            "customer_id": "c-1042",
            "order_id": "A-1001",
            "occurred_at": "2026-05-01T12:00:00Z",
            "amount": "59.90",
            "currency": "EUR",
        },
        {
            "type": "page_view",
            "event_id": "web:5f3c9a",
            "customer_id": "c-1042",
            "occurred_at": "2026-05-01T12:01:00Z",
            "properties": {"path": "/shoes"},
        },
        {
            "type": "customer_traits",
            "event_id": "crm:c-1042:77",
            "customer_id": "c-1042",
            "occurred_at": "2026-05-01T12:02:00Z",
            "traits": {"country": "DE"},
        },
    ]
}


def request_body() -> dict[str, Any]:
    """`{"events": [...]}`: 1 to 1,000 events of any family, each as its contract says."""
    (event, customer), defs = msgspec.json.schema_components((Event, CustomerEvent))
    schema = {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_EVENTS,
                "items": {"anyOf": [event, customer]},
            }
        },
        "$defs": defs,
    }
    return openapi.schema_body(schema, _EXAMPLE)


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in `events`, from 0")
    event_id: str | None = Field(description="The event's `event_id`, when it has one")
    reason: str = Field(
        description="The dead-letter reason ingest would give it: `schema_violation`, "
        "`unknown_event_type`, `unsupported_schema_version`, `undecodable`, `oversized`, "
        "`occurred_at_out_of_range` or `unknown_currency`"
    )
    field: str | None = Field(description="JSON path of the offending field, within the event")
    detail: str


class EventsAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": 2,
                    "rejected": 1,
                    "rejections": [
                        {
                            "index": 1,
                            "event_id": "web:5f3c9a",
                            "reason": "schema_violation",
                            "field": "$.occurred_at",
                            "detail": "required field is missing",
                        }
                    ],
                }
            ]
        }
    )

    accepted: int = Field(description="Events Kafka has acknowledged; ingest applies each once")
    rejected: int = Field(description="Events refused, none of them produced")
    rejections: list[RejectedEvent] = Field(description="Each refused event, in batch order")
