"""Response bodies of the segment endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class SegmentView(BaseModel):
    name: str
    description: str
    condition: str = Field(description="The rule, in the definitions language")
    size: int = Field(description="Customers currently in this segment")


class DimensionView(BaseModel):
    name: str
    description: str
    segments: list[SegmentView] = Field(description="In rule order")


class DefinitionsView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 3,
                    "content_hash": "9f2c1e…",
                    "loaded_at": "2026-03-01T09:00:00Z",
                    "description": "Default lifecycle, value, RFM and engagement segments.",
                    "dimensions": [
                        {
                            "name": "engagement",
                            "description": "Recency of interactions.",
                            "segments": [
                                {
                                    "name": "engaged",
                                    "description": "",
                                    "condition": "days_since_last_interaction < 7",
                                    "size": 1204,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )

    version: int
    content_hash: str
    loaded_at: datetime
    description: str
    dimensions: list[DimensionView]


class Member(BaseModel):
    customer_id: str
    since: datetime


class MembersPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dimension": "value_tier",
                    "segment": "vip",
                    "items": [{"customer_id": "c-1042", "since": "2026-02-01T09:30:00Z"}],
                    "next_cursor": "bTpjLTEwNDI",
                }
            ]
        }
    )

    dimension: str
    segment: str
    items: list[Member] = Field(description="In customer_id order")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")
