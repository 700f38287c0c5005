"""The erasure endpoint's answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErasureResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-1042",
                    "found": True,
                    "rows_erased": {"orders": 12, "interactions": 340, "segment_history": 9},
                }
            ]
        }
    )

    customer_id: str
    found: bool = Field(description="Whether anything was stored for the customer")
    rows_erased: dict[str, int] = Field(description="Rows deleted, per table")
