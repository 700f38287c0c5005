"""Settings common to every service.

Each service has one settings class with its own env prefix, read once at the entry point
and passed down. Connection settings are shared: the same names are used by deploy/stack.sh,
docker-compose.yml and the tests, so that one environment configures everything.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_currency_rates() -> dict[str, Decimal]:
    """`STREAMSEG_INGEST_CURRENCY_RATES` when unset: ingest converts with them, and the API
    refuses an order in any other currency, as ingest would."""
    return {
        "EUR": Decimal("1"),
        "USD": Decimal("0.92"),
        "GBP": Decimal("1.17"),
        "SEK": Decimal("0.087"),
        "PLN": Decimal("0.23"),
        "CHF": Decimal("1.05"),
    }


class DatabaseSettings(BaseSettings):
    """Where PostgreSQL is: all that `python -m shared.db` needs."""

    model_config = SettingsConfigDict(env_prefix="STREAMSEG_", extra="ignore", frozen=True)

    database_url: str = Field(
        description="SQLAlchemy URL, postgresql+asyncpg://user:pw@host:port/db"
    )
    database_schema: str = Field(
        default="public",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema holding StreamSeg's tables; tests use one per test",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ConnectionSettings(DatabaseSettings):
    """Where PostgreSQL, Redis and Kafka are. Required: there are no defaults to fall back on."""

    redis_url: str = Field(description="redis://host:port/db")
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    redis_key_prefix: str = Field(
        default="streamseg:", description="Prefix of every Redis key; tests use one per test"
    )
