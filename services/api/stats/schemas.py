"""Response bodies of the statistics endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Transition(BaseModel):
    dimension: str
    from_segment: str | None = Field(description="null: the customer's first assignment")
    to_segment: str | None = Field(
        description="null: the customer left the dimension when it was removed (counted only "
        "once it is back in force)"
    )
    count: int


class TransitionsView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2026-03-01T00:00:00Z",
                    "until": "2026-03-02T00:00:00Z",
                    "total": 57,
                    "transitions": [
                        {
                            "dimension": "lifecycle",
                            "from_segment": "active",
                            "to_segment": "at_risk",
                            "count": 41,
                        },
                        {
                            "dimension": "lifecycle",
                            "from_segment": None,
                            "to_segment": "prospect",
                            "count": 16,
                        },
                    ],
                }
            ]
        }
    )

    since: datetime
    until: datetime
    total: int
    transitions: list[Transition] = Field(description="By dimension, then most frequent first")
