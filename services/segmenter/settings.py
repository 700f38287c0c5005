"""Segmenter settings: env prefix STREAMSEG_SEGMENTER_."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class SegmenterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSEG_SEGMENTER_", extra="ignore", frozen=True
    )

    changes_topic: str = "segment-changes"
    topic_partitions: int = 4
    ops_host: str = "127.0.0.1"
    ops_port: int = 8102
    clock: str = "system"
