"""Settings common to every service.

Each service has one settings class with its own env prefix, read once at the entry point
and passed down. Connection settings are shared: the same names are used by deploy/stack.sh,
docker-compose.yml and the tests, so that one environment configures everything.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConnectionSettings(BaseSettings):
    """Where PostgreSQL, Redis and Kafka are. Required: there are no defaults to fall back on."""

    model_config = SettingsConfigDict(env_prefix="STREAMSEG_", extra="ignore", frozen=True)

    database_url: str = Field(
        description="SQLAlchemy URL, postgresql+asyncpg://user:pw@host:port/db"
    )
    redis_url: str = Field(description="redis://host:port/db")
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    database_schema: str = Field(
        default="public",
        description="PostgreSQL schema holding StreamSeg's tables; tests use one per test",
    )
    redis_key_prefix: str = Field(
        default="streamseg:", description="Prefix of every Redis key; tests use one per test"
    )
    log_level: str = "INFO"
    log_json: bool = True
