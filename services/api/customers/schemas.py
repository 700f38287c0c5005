"""Response and request bodies of the customer endpoints."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from shared.events.limits import ID_MAX_LENGTH, ID_PATTERN
from shared.events.segment_change import Cause

BATCH_MAX_IDS = 500

CustomerId = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]

_T = "2026-03-01T12:00:00Z"


class SegmentAssignment(BaseModel):
    segment: str
    since: datetime = Field(description="When the customer entered this segment")
    reason: str = Field(description="The rule's condition with the customer's values")
    definition_version: int


class AudienceMembership(BaseModel):
    since: datetime = Field(description="When the customer entered this audience")
    reason: str = Field(description="The audience's condition with the customer's values")
    definition_version: int


class AggregatesSummary(BaseModel):
    as_of: datetime = Field(
        description="Moment the windowed figures are computed for: the evaluation time when "
        "the answer comes from the cache, the request time when it comes from the database"
    )
    order_count: int
    net_spend: Decimal
    spend_365d: Decimal
    orders_365d: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    interaction_count: int
    interactions_30d: int
    last_interaction_at: datetime | None
    open_cart_at: datetime | None
    metrics: dict[str, str | int | None] = Field(
        default_factory=dict,
        description="The event metrics the definitions declare, as of `as_of`: counts as "
        "numbers, sums as decimal strings, first and last times as RFC 3339 strings (null: no "
        "such event)",
    )
    counted_since: dict[str, datetime] = Field(
        default_factory=dict,
        description="For lifetime metrics over events ingest does not keep forever "
        "(interactions), the time of the oldest event they could count",
    )


_EXAMPLE: dict[str, JsonValue] = {
    "customer_id": "c-1042",
    "segments": {
        "lifecycle": {
            "segment": "active",
            "since": "2026-01-10T08:00:00Z",
            "reason": "days_since_first_order=80.2 >= 30 and days_since_last_order=3.1 < 90",
            "definition_version": 1,
        },
        "value_tier": {
            "segment": "high",
            "since": "2026-02-01T09:30:00Z",
            "reason": "spend_365d=1830.5 >= high_spend=1200 and spend_365d < vip_spend=4000",
            "definition_version": 1,
        },
    },
    "audiences": {
        "big_spenders": {
            "since": "2026-02-01T09:30:00Z",
            "reason": "value_tier=high in [vip, high]",
            "definition_version": 1,
        }
    },
    "scores": {"f_score": 4, "m_score": 5, "r_score": 4},
    "definition_version": 1,
    "evaluated_at": _T,
    "next_change_at": "2026-03-28T12:00:00Z",
    "staleness_seconds": 4.2,
    "source": "cache",
    "aggregates": {
        "as_of": _T,
        "order_count": 7,
        "net_spend": "1830.5000",
        "spend_365d": "1830.5000",
        "orders_365d": 7,
        "first_order_at": "2025-12-11T10:00:00Z",
        "last_order_at": "2026-02-26T10:00:00Z",
        "interaction_count": 93,
        "interactions_30d": 12,
        "last_interaction_at": "2026-03-01T11:58:00Z",
        "open_cart_at": None,
    },
}


class CustomerSegments(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    customer_id: str
    segments: dict[str, SegmentAssignment] = Field(description="One segment per dimension")
    audiences: dict[str, AudienceMembership] = Field(
        default_factory=dict,
        description="The audiences the customer is in, by name (any number; those the "
        "customer is not in are absent)",
    )
    scores: dict[str, int | None] = Field(
        description="The evaluation's score of every score the definitions define (by name, "
        "1 is the worst bucket; null when its input is null); empty for an evaluation made "
        "before scores were kept"
    )
    definition_version: int = Field(description="Definitions version of the evaluation")
    evaluated_at: datetime
    next_change_at: datetime | None = Field(
        description="When time alone would change a segment, if nothing else happens first"
    )
    staleness_seconds: float = Field(description="Seconds since `evaluated_at`")
    source: Literal["cache", "database"]
    aggregates: AggregatesSummary | None


class BatchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"customer_ids": ["c-1", "c-2"]}]})

    customer_ids: list[CustomerId] = Field(min_length=1, max_length=BATCH_MAX_IDS)


class BatchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"customers": [_EXAMPLE], "not_found": ["c-2"]}]}
    )

    customers: list[CustomerSegments]
    not_found: list[str]


class HistoryEntry(BaseModel):
    id: int = Field(description="Position in the change log (the change stream's event id)")
    change_id: UUID = Field(description="The change event's id, the same as on Kafka")
    dimension: str
    from_segment: str | None = Field(description="null for the customer's first assignment")
    to_segment: str | None = Field(
        description="null when the dimension was removed from the definitions (an exit)"
    )
    reason: str
    cause: Cause = Field(description="Why the customer was evaluated (docs/events.md, Causes)")
    definition_version: int
    caused_by_event_at: datetime | None
    evaluated_at: datetime
    sequence: int


class HistoryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-1042",
                    "items": [
                        {
                            "id": 981,
                            "change_id": "0b7e8a52-3d7a-5e55-9d57-5d0f2c8a1b11",
                            "dimension": "lifecycle",
                            "from_segment": "new",
                            "to_segment": "active",
                            "reason": "days_since_first_order=30.0 >= 30 and ...",
                            "cause": "time",
                            "definition_version": 1,
                            "caused_by_event_at": None,
                            "evaluated_at": "2026-01-10T08:00:00Z",
                            "sequence": 3,
                        }
                    ],
                    "next_cursor": "aDo5ODE",
                }
            ]
        }
    )

    customer_id: str
    items: list[HistoryEntry] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")
