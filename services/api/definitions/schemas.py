"""Bodies of the definitions endpoints: validation, versions, activation, diffs, previews."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.definitions.repository import PreviewStatus, Publish

# The columns are PostgreSQL integer.
VERSION_MAX = 2**31 - 1


def _storable(text: str) -> str:
    # PostgreSQL text holds neither NUL nor a lone surrogate (which JSON can spell).
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


Note = Annotated[str, Field(max_length=1000), AfterValidator(_storable)]
Content = Annotated[
    str, Field(description="The definitions document (YAML, docs/segments.md)", min_length=1)
]
Version = Annotated[int, Field(ge=1, le=VERSION_MAX)]

_EXAMPLE_YAML = (
    "description: Default lifecycle, value, RFM and engagement segments.\n"
    "dimensions:\n  engagement:\n    segments:\n"
    "      engaged: days_since_last_interaction < 7\n      ...\n"
)


class ProblemView(BaseModel):
    dimension: str | None
    rule: str | None = Field(description="The segment, or `let <name>`")
    message: str


class DimensionSummary(BaseModel):
    name: str
    description: str
    segments: list[str] = Field(description="In rule order, which is the tie-break")
    metrics: list[str] = Field(description="Metrics, scores and cut-offs its rules read")


class AudienceSummary(BaseModel):
    name: str
    description: str
    condition: str
    dimensions: list[str] = Field(description="Dimensions whose segment it reads")
    audiences: list[str] = Field(description="Audiences it reads")
    metrics: list[str] = Field(description="Metrics, scores and cut-offs it reads")


class CutoffView(BaseModel):
    name: str
    metric: str | None
    top_percent: float | None = Field(description="Resolved from the population when set")
    value: float | None = Field(description="An absolute threshold")


class ScoreView(BaseModel):
    name: str
    metric: str
    buckets: int
    better: Literal["higher", "lower"]


class DefinitionsSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "content_hash": "9f2c1e…",
                    "description": "Default lifecycle, value, RFM and engagement segments.",
                    "dimensions": [
                        {
                            "name": "engagement",
                            "description": "Recency of interactions.",
                            "segments": ["engaged", "casual", "dormant", "none"],
                            "metrics": ["days_since_last_interaction"],
                        }
                    ],
                    "cutoffs": [
                        {
                            "name": "vip_spend",
                            "metric": "spend_365d",
                            "top_percent": 5.0,
                            "value": None,
                        }
                    ],
                    "scores": [
                        {
                            "name": "r_score",
                            "metric": "days_since_last_order",
                            "buckets": 5,
                            "better": "lower",
                        }
                    ],
                    "in_force_version": 3,
                    "changed_dimensions": ["engagement"],
                }
            ]
        }
    )

    content_hash: str = Field(description="Of the parsed content: formatting does not count")
    description: str
    dimensions: list[DimensionSummary]
    audiences: list[AudienceSummary] = Field(
        default_factory=list, description="In evaluation order: each after those it reads"
    )
    cutoffs: list[CutoffView]
    scores: list[ScoreView]
    in_force_version: int | None = Field(description="What `changed_dimensions` is against")
    changed_dimensions: list[str] = Field(
        description="Dimensions and audiences an activation would re-evaluate: added, removed,"
        " or whose rules (or the cut-offs and scores they read, or for an audience the"
        " dimensions and audiences it reads) differ from the version in force"
    )


class BackfillView(BaseModel):
    total: int = Field(description="Customers when the version was activated")
    queued: int = Field(description="Customers queued for re-evaluation so far")
    started_at: datetime
    fed_at: datetime | None = Field(description="When every customer had been queued")
    completed_at: datetime | None = Field(description="When every re-evaluation was done")
    superseded_by: int | None = Field(description="A later activation took over its work")


class VersionView(BaseModel):
    version: int
    content_hash: str
    activated_at: datetime
    activated_by: str = Field(description="`key:<id>`, or `segmenter` for the seeded version")
    note: str
    replaces: int | None
    publish: Publish = Field(description="How the backfill's segment changes are published")
    changed_dimensions: list[str]
    in_force: bool
    backfill: BackfillView | None = Field(
        description="The re-evaluation this activation started, if it changed any dimension"
    )


_VERSION_EXAMPLE: dict[str, Any] = {
    "version": 4,
    "content_hash": "9f2c1e…",
    "activated_at": "2026-03-01T12:00:00Z",
    "activated_by": "key:3fa9c0d1e2b4",
    "note": "engaged is now 10 days",
    "replaces": 3,
    "publish": "summary",
    "changed_dimensions": ["engagement"],
    "in_force": True,
    "backfill": {
        "total": 20000,
        "queued": 20000,
        "started_at": "2026-03-01T12:00:00Z",
        "fed_at": "2026-03-01T12:00:09Z",
        "completed_at": None,
        "superseded_by": None,
    },
}


class VersionDetail(VersionView):
    model_config = ConfigDict(
        json_schema_extra={"examples": [_VERSION_EXAMPLE | {"content": _EXAMPLE_YAML}]}
    )

    content: str = Field(description="The definitions document as it was activated")


class VersionPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"in_force": 4, "items": [_VERSION_EXAMPLE], "next_cursor": None}]
        }
    )

    in_force: int | None = Field(description="The version in force; null before any")
    items: list[VersionView] = Field(description="Newest first")
    next_cursor: str | None


class ActivationRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "content": _EXAMPLE_YAML,
                    "replaces": 3,
                    "note": "engaged is now 10 days",
                    "publish": "summary",
                }
            ]
        }
    )

    content: Content
    replaces: Version | None = Field(
        description="The version in force as the caller saw it (null only for the first);"
        " if another activation committed since, the answer is 409"
    )
    note: Note = ""
    publish: Publish = Field(
        default="each",
        description="The backfill's changes: `each` published like live ones, `none` not"
        " published, `summary` one summary event",
    )


class RollbackRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"replaces": 4, "note": "", "publish": "each"}]}
    )

    replaces: Version = Field(description="The version in force as the caller saw it")
    note: Note = Field(default="", description="Empty: `rollback to version N`")
    publish: Publish = "each"


class PreviewRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"content": _EXAMPLE_YAML, "samples": 10}]}
    )

    content: Content
    samples: int = Field(default=10, ge=1, le=100, description="Sample customers per move")


class PreviewProgress(BaseModel):
    done: int = Field(description="Customers evaluated so far")
    total: int | None = Field(description="Customers to evaluate; null until the run starts")


class PreviewView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b5e8f0e-3c1a-4d55-9a43-2f1f4c9b7a10",
                    "status": "running",
                    "created_at": "2026-03-01T12:00:00Z",
                    "created_by": "key:3fa9c0d1e2b4",
                    "expires_at": "2026-03-02T12:00:00Z",
                    "base_version": 3,
                    "content_hash": "9f2c1e…",
                    "samples": 10,
                    "progress": {"done": 5000, "total": 20000},
                    "as_of": "2026-03-01T12:00:01Z",
                    "finished_at": None,
                    "result": None,
                    "error": None,
                }
            ]
        }
    )

    id: str
    status: PreviewStatus
    created_at: datetime
    created_by: str
    expires_at: datetime = Field(description="The job and its result are gone after this")
    base_version: int = Field(description="The version in force it is compared with")
    content_hash: str
    samples: int
    progress: PreviewProgress
    as_of: datetime | None = Field(description="The instant every customer is evaluated at")
    finished_at: datetime | None
    result: dict[str, Any] | None = Field(
        description="When done: sizes now and under the candidate, and the moves between"
        " them with sample customers (docs/api.md)"
    )
    error: str | None = Field(description="When failed: why")


Change = Literal["added", "removed", "changed"]


class SegmentChangeView(BaseModel):
    name: str
    status: Change
    old_condition: str | None
    new_condition: str | None
    old_description: str | None
    new_description: str | None


class LetChangeView(BaseModel):
    name: str
    status: Change
    old: str | None
    new: str | None


class DimensionDiffView(BaseModel):
    name: str
    status: Literal["added", "removed", "changed", "unchanged"]
    reevaluated: bool = Field(description="Whether activating `b` over `a` re-evaluates it")
    old_description: str | None
    new_description: str | None
    segments: list[SegmentChangeView] = Field(description="Only the segments that differ")
    lets: list[LetChangeView]
    order_changed: bool = Field(description="The rules both have are in another order")
    inputs_changed: list[str] = Field(description="Cut-offs and scores it reads that differ")


class AudienceDiffView(BaseModel):
    name: str
    status: Literal["added", "removed", "changed", "unchanged"]
    reevaluated: bool = Field(
        description="Whether activating `b` over `a` re-evaluates it: its condition, or a "
        "cut-off, score, dimension or audience it reads, differs"
    )
    old_condition: str | None
    new_condition: str | None
    old_description: str | None
    new_description: str | None


class CutoffChangeView(BaseModel):
    name: str
    status: Change
    old: CutoffView | None
    new: CutoffView | None


class ScoreChangeView(BaseModel):
    name: str
    status: Change
    old: ScoreView | None
    new: ScoreView | None


class TextChange(BaseModel):
    old: str
    new: str


class DiffView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_version": 3,
                    "to_version": 4,
                    "identical": False,
                    "description": {"old": "Default segments.", "new": "Default segments."},
                    "dimensions": [
                        {
                            "name": "engagement",
                            "status": "changed",
                            "reevaluated": True,
                            "old_description": "Recency of interactions.",
                            "new_description": "Recency of interactions.",
                            "segments": [
                                {
                                    "name": "engaged",
                                    "status": "changed",
                                    "old_condition": "days_since_last_interaction < 7",
                                    "new_condition": "days_since_last_interaction < 10",
                                    "old_description": "",
                                    "new_description": "",
                                }
                            ],
                            "lets": [],
                            "order_changed": False,
                            "inputs_changed": [],
                        }
                    ],
                    "cutoffs": [],
                    "scores": [],
                    "text": "--- version 3\n+++ version 4\n@@ -60 +60 @@\n-      engaged: …",
                }
            ]
        }
    )

    from_version: int
    to_version: int
    identical: bool = Field(description="No difference but formatting and comments")
    description: TextChange
    dimensions: list[DimensionDiffView] = Field(description="b's order, then those b removed")
    audiences: list[AudienceDiffView] = Field(
        default_factory=list, description="b's order, then those b removed"
    )
    cutoffs: list[CutoffChangeView] = Field(description="Only those that differ")
    scores: list[ScoreChangeView] = Field(description="Only those that differ")
    text: str = Field(description="A unified diff of the two documents, comments included")
