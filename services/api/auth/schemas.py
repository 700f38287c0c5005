"""Bodies of the admin endpoints: API keys and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.api.auth.keys import SCOPES, Scope


class KeyView(BaseModel):
    id: str = Field(description="Non-secret key id, the 12 hex digits after `ssk_`")
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class NewKeyRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "storefront", "scopes": ["segments:read"]}]}
    )

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))


class NewKey(KeyView):
    key: str = Field(description="The key itself; shown this once, only its hash is stored")


class KeyList(BaseModel):
    keys: list[KeyView]


class AuditView(BaseModel):
    id: int
    at: datetime
    actor: str
    key_id: str | None
    action: str
    customer_id: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": 77,
                            "at": "2026-03-01T12:00:00Z",
                            "actor": "key:3fa9c0d1e2b4",
                            "key_id": "3fa9c0d1e2b4",
                            "action": "customer.segments.read",
                            "customer_id": "c-1042",
                            "detail": None,
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    items: list[AuditView] = Field(description="Newest first")
    next_cursor: str | None
