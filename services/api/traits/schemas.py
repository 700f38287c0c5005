"""Bodies of the traits endpoints.

The request bodies are msgspec structs over the event contract's own types
(shared/events/customers.py), so a body is checked by the rules ingest applies, and their
JSON Schema is the contract's; the answers are pydantic models, as elsewhere in the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from services.api import openapi
from shared.events.customers import Traits, UnsetNames
from shared.events.fields import Id, OccurredAt


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # A caller that retries after a 503 sends the same event_id, so a copy that reached
    # Kafka after all is counted once.
    event_id: Id | None = None
    occurred_at: OccurredAt | None = None


class ReplaceBody(_Body, kw_only=True, forbid_unknown_fields=True):
    """PUT: the customer's traits from now on; every trait not in `traits` is cleared."""

    traits: Traits


class PatchBody(_Body, kw_only=True, forbid_unknown_fields=True):
    """PATCH: traits to set, and names in `unset` to clear; the others stay as they are."""

    traits: Traits = msgspec.field(default_factory=Traits)
    unset: UnsetNames = ()


_EXAMPLES: dict[type[_Body], dict[str, Any]] = {
    ReplaceBody: {
        "traits": {
            "country": "DE",
            "city": "Berlin",
            "birth_date": "1990-04-12",
            "interests": ["running"],
            "marketing_consent": True,
            "custom": {"loyalty_tier": "gold"},
        }
    },
    PatchBody: {"traits": {"city": "Hamburg", "custom": {"children": 2}}, "unset": ["region"]},
}


def request_body(body: type[_Body]) -> dict[str, Any]:
    """The `openapi_extra` of an endpoint that reads `body` itself."""
    return openapi.request_body(body, _EXAMPLES[body])


class TraitsAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-1042",
                    "event_id": "api:7f1c2b9e-3a61-4d0c-9a43-6a2f1d1e0b55",
                    "occurred_at": "2026-05-01T12:00:00.123456Z",
                }
            ]
        }
    )

    customer_id: str
    event_id: str = Field(description="The customer event produced; ingest applies it once")
    occurred_at: datetime = Field(description="The time the traits are true as of")


class TraitStamp(BaseModel):
    event_id: str
    occurred_at: datetime


class CustomerTraitsView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-1042",
                    "traits": {"country": "DE", "interests": ["running"], "custom": {"tier": 2}},
                    "set_by": {
                        "country": {
                            "event_id": "api:7f1c2b9e-3a61-4d0c-9a43-6a2f1d1e0b55",
                            "occurred_at": "2026-05-01T12:00:00Z",
                        }
                    },
                    "version": 3,
                    "updated_at": "2026-05-01T12:00:01Z",
                }
            ]
        }
    )

    customer_id: str
    traits: dict[str, Any] = Field(
        description="Current traits in the shape PUT takes: built-in ones by name, custom "
        "ones under `custom`; cleared traits are absent"
    )
    set_by: dict[str, TraitStamp] = Field(
        description="Per current trait, the event that set it (the latest by occurred_at)"
    )
    version: int = Field(description="Grows with every ingest batch that changed these traits")
    updated_at: datetime
