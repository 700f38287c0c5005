"""API settings: env prefix STREAMSEG_API_."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import default_currency_rates

MIB = 1024 * 1024


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSEG_API_", extra="ignore", frozen=True, populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8100
    pool_size: int = Field(default=10, ge=1, le=100)
    database_timeout_ms: int = Field(default=2000, ge=10)
    activation_timeout_ms: int = Field(default=30_000, ge=10)
    cache_timeout_ms: int = Field(default=50, ge=1)
    cache_retry_after_ms: int = Field(default=1000, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    auth_cache_seconds: float = Field(default=10, ge=0)
    audit_flush_interval_ms: int = Field(default=500, ge=10)
    audit_buffer_max: int = Field(default=50_000, ge=100)
    stream_poll_interval_ms: int = Field(default=250, ge=10)
    stream_heartbeat_seconds: float = Field(default=15, gt=0)
    ready_backlog_seconds: float = Field(default=60, gt=0)
    ready_backlog_rows: int = Field(default=100_000, ge=1)
    preview_keep_seconds: float = Field(default=86_400, gt=0)
    fast_path: bool = True
    workers: int = Field(default=1, ge=1, le=32)
    # The topics ingest reads, and the currencies it converts, under ingest's own variables,
    # so that the two cannot disagree about where an event goes or whether it is valid.
    customers_topic: str = Field(
        default="customers", validation_alias="STREAMSEG_INGEST_CUSTOMERS_TOPIC"
    )
    orders_topic: str = Field(default="orders", validation_alias="STREAMSEG_INGEST_ORDERS_TOPIC")
    interactions_topic: str = Field(
        default="interactions", validation_alias="STREAMSEG_INGEST_INTERACTIONS_TOPIC"
    )
    currency_rates: dict[str, Decimal] = Field(
        default_factory=default_currency_rates, validation_alias="STREAMSEG_INGEST_CURRENCY_RATES"
    )
    traits_produce_timeout_ms: int = Field(default=5000, ge=100)
    # POST /v1/events: its own body limit (a batch is larger than any other body), and how
    # long it waits for Kafka to acknowledge every event of a batch.
    events_max_body_bytes: int = Field(default=MIB, ge=1024, le=16 * MIB)
    events_produce_timeout_ms: int = Field(default=5000, ge=100)
    # Member exports read this many rows per query (and hold two chunks at most).
    export_chunk_rows: int = Field(default=5000, ge=100, le=100_000)
    # Under the dispatcher's own variables, so that the API refuses the targets the
    # dispatcher refuses, and a replay gets the dispatcher's total retry time.
    webhooks_allow_private_targets: bool = Field(
        default=False, validation_alias="STREAMSEG_WEBHOOKS_ALLOW_PRIVATE_TARGETS"
    )
    webhooks_retry_total_seconds: float = Field(
        default=86_400.0, gt=0, validation_alias="STREAMSEG_WEBHOOKS_RETRY_TOTAL_SECONDS"
    )
