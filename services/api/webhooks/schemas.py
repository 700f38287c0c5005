"""Bodies of the /v1/webhooks endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events.segment_change import Cause

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$")]
Secret = Annotated[str, Field(pattern=r"^whsec_[A-Za-z0-9+/=]+$", max_length=200)]


class FiltersBody(BaseModel):
    """Each list narrows (empty: anything). `dimensions` and `audiences` together accept a
    change in any name listed in either; `segments` a change from or to a listed segment;
    `causes` a change with a listed cause."""

    model_config = ConfigDict(extra="forbid")

    dimensions: list[Name] = Field(default_factory=list, max_length=100)
    audiences: list[Name] = Field(default_factory=list, max_length=100)
    segments: list[Name] = Field(default_factory=list, max_length=100)
    causes: list[Cause] = Field(default_factory=list, max_length=10)


class NewSubscription(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/streamseg",
                    "description": "CRM: lifecycle moves",
                    "filters": {"dimensions": ["lifecycle"], "causes": ["event", "time"]},
                }
            ]
        },
    )

    url: Url
    description: str = Field(default="", max_length=500)
    filters: FiltersBody = Field(default_factory=FiltersBody)
    secret: Secret | None = Field(
        default=None, description="`whsec_` and base64 of 24 to 64 bytes; generated if absent"
    )


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    description: str | None = Field(default=None, max_length=500)
    filters: FiltersBody | None = None
    enabled: bool | None = Field(
        default=None,
        description="false: disable (pending deliveries become failed); true: enable again, "
        "with a clean failure count (replay what failed meanwhile)",
    )


class SubscriptionView(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    filters: FiltersBody
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None = Field(description="Why it was disabled, if it is")
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the previous secret signs too (a rotation's grace period)"
    )
    created_at: datetime
    updated_at: datetime


class NewSubscriptionView(SubscriptionView):
    secret: str = Field(description="The signing secret; shown this once")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionView]


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: Secret | None = Field(default=None, description="The new secret; generated if absent")
    grace_seconds: int = Field(
        default=86_400, ge=0, le=7 * 86_400, description="How long the old secret still signs"
    )


class RotatedSecret(BaseModel):
    secret: str = Field(description="The new signing secret; shown this once")
    previous_secret_expires_at: datetime | None


class AttemptView(BaseModel):
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    latency_ms: float


class DeliveryView(BaseModel):
    id: int
    event_id: str = Field(description="The change's id, sent as `webhook-id`")
    event_type: str
    customer_id: str
    status: Literal["pending", "delivered", "failed"]
    failed_reason: str | None = Field(description="exhausted, gone or subscription_disabled")
    attempts: int
    next_attempt_at: datetime | None = Field(
        description="When it is tried next (while being sent: when its lease ends); null "
        "while it waits behind an earlier delivery for the same customer"
    )
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    enqueued_at: datetime
    delivered_at: datetime | None


class DeliveryDetail(DeliveryView):
    attempt_log: list[AttemptView]


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"from_change_id": "0b7e8a52-3d7a-5e55-9d57-5d0f2c8a1b11"}]
        },
    )

    delivery_id: int | None = Field(default=None, ge=1, description="Replay this delivery")
    change_id: str | None = Field(
        default=None, max_length=64, description="Replay this change's delivery"
    )
    from_change_id: str | None = Field(
        default=None,
        max_length=64,
        description="Replay this change's delivery and every later one in the log",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ReplayRequest:
        given = [v for v in (self.delivery_id, self.change_id, self.from_change_id) if v]
        if len(given) != 1:
            raise ValueError("give exactly one of delivery_id, change_id, from_change_id")
        return self


class ReplayResult(BaseModel):
    replayed: int = Field(description="Deliveries put back in line (pending ones are left)")
