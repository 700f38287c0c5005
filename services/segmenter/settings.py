"""Segmenter settings: env prefix STREAMSEG_SEGMENTER_."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.clock import clock_from_setting


class SegmenterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSEG_SEGMENTER_", extra="ignore", frozen=True, populate_by_name=True
    )

    changes_topic: str = "segment-changes"
    topic_partitions: int = Field(default=4, ge=1)
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8102, ge=0, le=65535)
    clock: str = "system"
    # None: the defaults shipped in shared/segmentation/definitions/default.yaml.
    definitions_path: Path | None = None
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # Evaluation loops per process, each with its own connection: while one waits for
    # PostgreSQL, another evaluates. Leases keep their customers apart.
    evaluators: int = Field(default=3, ge=1, le=16)
    # While less than a full batch is due, the process leases once per this interval
    # (services/segmenter/pacing.py): batches gather at low rates, and an idle one is cheap.
    idle_poll_seconds: float = Field(default=0.2, gt=0, le=5)
    population_interval_seconds: float = Field(default=300.0, gt=0)
    stats_refresh_seconds: float = Field(default=2.0, gt=0)
    publish_batch_size: int = Field(default=1000, ge=1)
    backlog_degraded_seconds: float = Field(default=30.0, gt=0)
    cache_repair_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # How often each process reads the version in force (one indexed row).
    definitions_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    # A definitions backfill queues at most this many customers a second, and only while
    # the live backlog's oldest row has waited less than backfill_live_lag_seconds.
    backfill_rate_per_second: float = Field(default=2500.0, gt=0)
    backfill_live_lag_seconds: float = Field(default=1.0, gt=0)
    # A population grown or shrunk by 10% has its statistics recomputed at once, but not
    # more often than this (services/segmenter/population.py, recompute_due).
    population_min_interval_seconds: float = Field(default=2.0, gt=0)
    preview_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Size history (services/segmenter/sizes.py): deltas folded this often, snapshots kept
    # at `sizes_step_seconds` for `sizes_fine_keep_days`, hourly and daily for theirs, and a
    # recount from customer_segments this often.
    sizes_fold_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    sizes_step_seconds: int = Field(default=300, ge=1, le=3600)
    sizes_fine_keep_days: float = Field(default=7.0, gt=0)
    sizes_hourly_keep_days: float = Field(default=90.0, gt=0)
    sizes_daily_keep_days: float = Field(default=730.0, gt=0)
    sizes_recount_interval_seconds: float = Field(default=86400.0, gt=0)
    # Where a customer's `age` moves, at midnight on the birthday (an IANA zone name). No
    # service prefix: whatever evaluates segments must read the same one.
    birthday_time_zone: str = Field(default="UTC", validation_alias="STREAMSEG_BIRTHDAY_TIME_ZONE")

    @field_validator("birthday_time_zone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        birthday_zone(value)  # raises ValueError naming what is wrong
        return value

    @property
    def birthday_zone(self) -> ZoneInfo:
        return birthday_zone(self.birthday_time_zone)

    @property
    def size_tiers(self) -> tuple[tuple[int, float], ...]:
        """(step, keep) in seconds of each snapshot series, finest first."""
        day = 86400.0
        return (
            (self.sizes_step_seconds, self.sizes_fine_keep_days * day),
            (3600, self.sizes_hourly_keep_days * day),
            (86400, self.sizes_daily_keep_days * day),
        )

    @field_validator("clock")
    @classmethod
    def _clock_parses(cls, value: str) -> str:
        clock_from_setting(value)  # raises ValueError naming what is wrong
        return value


def birthday_zone(name: str) -> ZoneInfo:
    """The zone of STREAMSEG_BIRTHDAY_TIME_ZONE, or ValueError naming the setting."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError) as error:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"STREAMSEG_BIRTHDAY_TIME_ZONE: unknown time zone {name!r}") from error
