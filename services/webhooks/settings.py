"""Webhook dispatcher settings: env prefix STREAMSEG_WEBHOOKS_."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.webhooks.schedule import RetrySchedule


class WebhooksSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSEG_WEBHOOKS_", extra="ignore", frozen=True, populate_by_name=True
    )

    # The topic the segmenter publishes changes to, under the segmenter's own variable, so
    # the two cannot disagree.
    changes_topic: str = Field(
        default="segment-changes", validation_alias="STREAMSEG_SEGMENTER_CHANGES_TOPIC"
    )
    topic_partitions: int = Field(
        default=4, ge=1, validation_alias="STREAMSEG_SEGMENTER_TOPIC_PARTITIONS"
    )
    group_id: str = "streamseg-webhooks"
    # Targets on loopback, private, link-local, multicast or reserved addresses are refused
    # unless this is true (the API reads the same variable when a subscription is written).
    allow_private_targets: bool = False
    retry_initial_seconds: float = Field(default=5.0, gt=0)
    retry_maximum_seconds: float = Field(default=3600.0, gt=0)
    retry_total_seconds: float = Field(default=86_400.0, gt=0)
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # A delivery taken by a sender is its own for this long; one whose process died goes
    # out again after it. Longer than a request and the write of its result.
    lease_seconds: float = Field(default=60.0, gt=0)
    max_in_flight: int = Field(default=256, ge=1, le=10_000)
    # Connections to one target origin, and requests in flight to it, per dispatcher.
    connections_per_origin: int = Field(default=32, ge=1, le=1000)
    claim_batch_size: int = Field(default=500, ge=1, le=10_000)
    idle_poll_ms: int = Field(default=100, ge=5, le=10_000)
    flush_interval_ms: int = Field(default=10, ge=0, le=1000)
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    max_poll_records: int = Field(default=2000, ge=1)
    max_response_bytes: int = Field(default=65_536, ge=0)
    # A subscription whose attempts have all failed for this long, and at least this many
    # times in a row, is disabled.
    disable_after_seconds: float = Field(default=432_000.0, ge=0)
    disable_after_failures: int = Field(default=50, ge=1)
    delivered_retention_hours: float = Field(default=168.0, gt=0)
    maintenance_interval_seconds: float = Field(default=60.0, gt=0)
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8104, ge=0, le=65535)

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> WebhooksSettings:
        if self.lease_seconds <= self.request_timeout_seconds:
            raise ValueError(
                "STREAMSEG_WEBHOOKS_LEASE_SECONDS must be longer than "
                "STREAMSEG_WEBHOOKS_REQUEST_TIMEOUT_SECONDS, or a slow delivery is sent twice"
            )
        self.schedule  # noqa: B018 - raises ValueError naming the bad schedule
        return self

    @property
    def schedule(self) -> RetrySchedule:
        return RetrySchedule(
            self.retry_initial_seconds, self.retry_maximum_seconds, self.retry_total_seconds
        )
