"""Response bodies of the ops endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "degraded", "failing"]


class ComponentReport(BaseModel):
    component: str
    status: Status
    latency_ms: float | None = None
    error: str | None = None
    due_rows: int | None = Field(default=None, description="segmenter_backlog: rows now due")
    oldest_due_seconds: float | None = Field(
        default=None, description="segmenter_backlog: how long the oldest due row has waited"
    )
    seconds_since_last_batch: float | None = Field(
        default=None, description="ingest_freshness: since a batch last committed (report only)"
    )


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "degraded",
                    "components": [
                        {"component": "postgres", "status": "ok", "latency_ms": 0.8},
                        {"component": "redis", "status": "ok", "latency_ms": 0.3},
                        {"component": "kafka", "status": "ok", "latency_ms": 12.5},
                        {
                            "component": "segmenter_backlog",
                            "status": "degraded",
                            "due_rows": 48210,
                            "oldest_due_seconds": 95.0,
                        },
                        {
                            "component": "ingest_freshness",
                            "status": "ok",
                            "seconds_since_last_batch": 0.4,
                        },
                    ],
                }
            ]
        }
    )

    status: Status = Field(
        description="failing (HTTP 503) if a component is unreachable; degraded (HTTP 200) if "
        "all are reachable but a threshold is exceeded; else ok"
    )
    components: list[ComponentReport]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
