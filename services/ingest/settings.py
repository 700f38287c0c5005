"""Ingest settings: env prefix STREAMSEG_INGEST_."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.clock import clock_from_setting
from shared.settings import default_currency_rates


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMSEG_INGEST_", extra="ignore", frozen=True)

    orders_topic: str = "orders"
    interactions_topic: str = "interactions"
    # Profile (traits) events; the API produces to it too, reading this same variable.
    customers_topic: str = "customers"
    topic_partitions: int = Field(default=4, ge=1)
    group_id: str = "streamseg-ingest"
    base_currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    # Units of base currency per unit of each currency. JSON in the environment, e.g.
    # STREAMSEG_INGEST_CURRENCY_RATES='{"EUR": "1", "USD": "0.92"}'. An event in a currency
    # that is not listed is dead-lettered, never guessed.
    currency_rates: dict[str, Decimal] = Field(default_factory=default_currency_rates)
    max_batch_records: int = Field(default=5000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(default=200, ge=1)
    # At low rates a fetch would return each record as it comes, and every batch pays its
    # dozen round trips for one event: the broker waits up to `fetch_max_wait_ms` for
    # `fetch_min_bytes` instead. At high rates the bytes are there at once.
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    fetch_max_wait_ms: int = Field(default=250, ge=0, le=10_000)
    # How long event ids are remembered, so that a duplicate is never applied twice: at
    # least as long as the longest retention.ms of the input topics, read at start. Only
    # needed when a topic keeps records forever (retention.ms -1), where ingest refuses to
    # start without it; a longer value than the retention lengthens the window.
    dedup_window_days: float | None = Field(default=None, gt=0)
    # Interaction rows older than this are only needed for lifetime counts, kept elsewhere.
    interaction_retention_days: int = Field(default=31, ge=30)
    prune_interval_seconds: float = Field(default=60.0, gt=0)
    stall_seconds: float = Field(default=60.0, gt=0)
    # How long a batch or a partition claim is retried through retriable errors (PostgreSQL
    # restarting or in recovery, Kafka unreachable) before the process exits for its
    # supervisor to restart it.
    retry_budget_seconds: float = Field(default=300.0, gt=0)
    # How often a worker compares its partitions' stored offsets with what it committed, to
    # read again batches a PostgreSQL crash took back on partitions that get no new record.
    offset_check_seconds: float = Field(default=5.0, gt=0)
    # A batch's transaction that has not finished after this long is on a connection that
    # stopped answering: the connection is closed and the batch retried on a new one. Above
    # the statement timeout (30 s), which bounds every healthy statement.
    batch_timeout_seconds: float = Field(default=90.0, gt=0)
    ops_host: str = "127.0.0.1"
    ops_port: int = 8101
    clock: str = "system"

    @field_validator("currency_rates")
    @classmethod
    def _rates_are_sane(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, rate in rates.items():
            if len(code) != 3 or not code.isupper():
                raise ValueError(f"currency code {code!r} must be 3 uppercase letters")
            if rate <= 0:
                raise ValueError(f"rate for {code} must be positive, got {rate}")
        return rates

    @model_validator(mode="after")
    def _base_currency_is_one(self) -> IngestSettings:
        if self.currency_rates.get(self.base_currency) != 1:
            raise ValueError(
                f"currency_rates must map the base currency {self.base_currency} to 1, "
                f"got {self.currency_rates.get(self.base_currency)}"
            )
        return self

    @field_validator("clock")
    @classmethod
    def _clock_parses(cls, value: str) -> str:
        clock_from_setting(value)  # raises ValueError naming what is wrong
        return value
