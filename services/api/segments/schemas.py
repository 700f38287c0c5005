"""Response bodies of the segment endpoints."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SegmentView(BaseModel):
    name: str
    description: str
    condition: str = Field(description="The rule, in the definitions language")
    resolved_condition: str = Field(
        description="The rule with each cut-off replaced by its value, or followed by "
        "`(unresolved)` while the population stats of this version do not resolve it"
    )
    size: int = Field(description="Customers currently in this segment")


class DimensionView(BaseModel):
    name: str
    description: str
    segments: list[SegmentView] = Field(description="In rule order")


class AudienceView(BaseModel):
    name: str
    description: str
    condition: str = Field(description="The condition, in the definitions language")
    resolved_condition: str = Field(
        description="The condition with each cut-off replaced by its value, as for a segment"
    )
    dimensions: list[str] = Field(description="The dimensions whose segment it reads")
    audiences: list[str] = Field(description="The audiences it reads (evaluated before it)")
    size: int = Field(
        description="Customers currently in it; its members are "
        "`/v1/segments/{name}/member/members`"
    )


class CutoffView(BaseModel):
    name: str
    metric: str | None
    top_percent: Decimal | None = Field(description="A percentile cut-off: the top N% of `metric`")
    value: Decimal | None = Field(description="An absolute cut-off: its value")
    resolved_value: Decimal | None = Field(
        description="What the cut-off stands for now: `value`, or the percentile resolved by "
        "the population stats; null while unresolved (nobody reaches it)"
    )
    resolved: str = Field(description="The comparison it stands for, readable")


class ScoreView(BaseModel):
    name: str
    metric: str
    buckets: int
    better: Literal["higher", "lower"] = Field(description="Which values get the best bucket")
    edges: list[Decimal] | None = Field(
        description="The `buckets - 1` ascending quantile edges of `metric`; null while "
        "unresolved (every value scores as the first bucket)"
    )


_EXAMPLE_TIME = "2026-03-01T09:00:00Z"


class DefinitionsView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 3,
                    "content_hash": "9f2c1e…",
                    "activated_at": _EXAMPLE_TIME,
                    "activated_by": "key:3fa9c0d1e2b4",
                    "note": "vip is the top 5%",
                    "loaded_at": _EXAMPLE_TIME,
                    "description": "Default lifecycle, value, RFM and engagement segments.",
                    "population_computed_at": "2026-03-01T09:05:00Z",
                    "population_customers": 48210,
                    "cutoffs": [
                        {
                            "name": "vip_spend",
                            "metric": "spend_365d",
                            "top_percent": "5",
                            "value": None,
                            "resolved_value": "428.28",
                            "resolved": "spend_365d >= 428.28",
                        }
                    ],
                    "scores": [
                        {
                            "name": "r_score",
                            "metric": "days_since_last_order",
                            "buckets": 5,
                            "better": "lower",
                            "edges": ["12.5", "31.25", "64", "121.75"],
                        }
                    ],
                    "dimensions": [
                        {
                            "name": "value_tier",
                            "description": "Spend in the last 365 days against percentiles.",
                            "segments": [
                                {
                                    "name": "vip",
                                    "description": "",
                                    "condition": "spend_365d >= vip_spend",
                                    "resolved_condition": "spend_365d >= 428.28",
                                    "size": 1204,
                                }
                            ],
                        }
                    ],
                    "audiences": [
                        {
                            "name": "vip_at_risk",
                            "description": "VIPs about to lapse.",
                            "condition": "value_tier = vip and lifecycle = at_risk",
                            "resolved_condition": "value_tier = vip and lifecycle = at_risk",
                            "dimensions": ["lifecycle", "value_tier"],
                            "audiences": [],
                            "size": 38,
                        }
                    ],
                }
            ]
        }
    )

    version: int = Field(description="The version in force")
    content_hash: str
    activated_at: datetime = Field(description="When this version was put in force")
    activated_by: str = Field(description="Who put it in force (`segmenter` for the seed)")
    note: str = Field(description="The note given with the activation")
    loaded_at: datetime = Field(description="The same as `activated_at`", deprecated=True)
    description: str
    population_computed_at: datetime | None = Field(
        description="When the population stats resolving the cut-offs and score edges were "
        "computed for this version; null before any were"
    )
    population_customers: int | None = Field(
        description="How many customers those stats were computed from"
    )
    cutoffs: list[CutoffView] = Field(description="In definitions order")
    scores: list[ScoreView] = Field(description="In definitions order")
    dimensions: list[DimensionView]
    audiences: list[AudienceView] = Field(
        default_factory=list, description="In evaluation order: each after those it reads"
    )


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
