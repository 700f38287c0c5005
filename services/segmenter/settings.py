"""Segmenter settings: env prefix STREAMSEG_SEGMENTER_."""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.clock import clock_from_setting


class SegmenterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSEG_SEGMENTER_", extra="ignore", frozen=True
    )

    changes_topic: str = "segment-changes"
    topic_partitions: int = 4
    ops_host: str = "127.0.0.1"
    ops_port: int = 8102
    clock: str = "system"

    @field_validator("clock")
    @classmethod
    def _clock_parses(cls, value: str) -> str:
        clock_from_setting(value)  # raises ValueError naming what is wrong
        return value
