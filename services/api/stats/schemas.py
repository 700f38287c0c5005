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


class SizeSeries(BaseModel):
    dimension: str = Field(description="A dimension, or an audience (whose segment is `member`)")
    segment: str
    customers: list[int] = Field(description="The segment's size at each of `at`")


class SizesView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2026-03-01T00:00:00Z",
                    "until": "2026-03-01T03:00:00Z",
                    "step_seconds": 3600,
                    "source_step_seconds": 3600,
                    "at": [
                        "2026-03-01T00:00:00Z",
                        "2026-03-01T01:00:00Z",
                        "2026-03-01T02:00:00Z",
                    ],
                    "series": [
                        {"dimension": "lifecycle", "segment": "active", "customers": [40, 41, 45]},
                        {"dimension": "lifecycle", "segment": "new", "customers": [12, 9, 7]},
                    ],
                }
            ]
        }
    )

    since: datetime
    until: datetime
    step_seconds: int | None = Field(description="The interval between points; null: no data")
    source_step_seconds: int | None = Field(
        description="The stored snapshots read (each point is the first of its interval)"
    )
    at: list[datetime] = Field(description="Each point's time, oldest first")
    series: list[SizeSeries] = Field(description="By dimension, then segment")
