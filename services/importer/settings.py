"""Importer settings: env prefix STREAMSEG_IMPORTER_.

What an event means (currency rates, the base currency, how long interaction rows are
kept) is read from ingest's own settings (STREAMSEG_INGEST_*), so that imported events are
treated exactly as streamed ones.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImporterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMSEG_IMPORTER_", extra="ignore", frozen=True)

    # Rows per transaction: each commits its rows with the file's checkpoint.
    chunk_rows: int = Field(default=50_000, ge=1, le=500_000)
    progress_interval_seconds: float = Field(default=0.5, gt=0)
    # After the rows are in: how long to wait for the segmenter to evaluate the imported
    # customers (running the same command again waits again), and how often to look.
    segment_wait_seconds: float = Field(default=900.0, ge=0)
    segment_poll_seconds: float = Field(default=0.5, gt=0)
