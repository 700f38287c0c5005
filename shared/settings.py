"""Settings common to every service.

Each service has one settings class with its own env prefix, read once at the entry point
and passed down. Connection settings are shared: the same names are used by deploy/stack.sh,
docker-compose.yml and the tests, so that one environment configures everything.

A secret can come from a file instead (`<NAME>_FILE`, as Docker and Kubernetes mount
secrets); setting both is an error naming both. The security settings become typed values
(shared/security.py) that the client factories take.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from shared.security import (
    KafkaProtocol,
    KafkaSecurity,
    PostgresTls,
    RedisTls,
    SaslMechanism,
    SslMode,
    client_context,
)

PREFIX = "STREAMSEG_"
# libpq's TLS parameters in the URL would be overridden by the settings without a word.
_URL_TLS_PARAMETERS = ("ssl", "sslmode", "sslrootcert", "sslcert", "sslkey")


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def read_secret_file(path: Path, setting: str) -> str:
    """The file's content without its final line break (an editor's or `echo`'s); ValueError
    naming `setting` and the path when it cannot be read or is empty."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{setting}: {path} is empty")
    return text


def _from_files(data: Any, secrets: tuple[str, ...]) -> Any:
    """Fill each of `secrets` from its `_file` field, refusing both at once."""
    if not isinstance(data, dict):
        return data
    for name in secrets:
        path = data.get(name + "_file")
        if path in (None, ""):
            continue
        if data.get(name) not in (None, ""):
            raise ValueError(
                f"{env_name(name)} and {env_name(name + '_file')} are both set; set one of them"
            )
        data = {**data, name: read_secret_file(Path(path), env_name(name + "_file"))}
    return data


def _database_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message quotes the URL, password and all.
        raise ValueError(
            f"{env_name('database_url')} is not a URL: postgresql+asyncpg://user@host:port/db"
        ) from None


def _check_readable(path: Path | None, field_name: str) -> None:
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{env_name(field_name)}: cannot read {path}: {exc}") from None


def _check_context(build: Callable[[], object], names: str) -> None:
    try:
        build()
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{names}: cannot load the TLS files: {exc}") from None


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

    # Errors name the settings, never their values: a password must not reach the logs.
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    database_url: str = Field(
        description="SQLAlchemy URL, postgresql+asyncpg://user:pw@host:port/db"
    )
    database_url_file: Path | None = None
    database_password: SecretStr | None = None
    database_password_file: Path | None = None
    database_sslmode: SslMode = "prefer"
    database_ssl_root_cert_file: Path | None = None
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

    @field_validator(
        "database_url_file",
        "database_password",
        "database_password_file",
        "database_ssl_root_cert_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose's `${NAME:-}` passes an empty value for a setting left out.
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _database_secrets(cls, data: Any) -> Any:
        data = _from_files(data, ("database_url", "database_password"))
        if not isinstance(data, dict) or data.get("database_password") in (None, ""):
            return data
        url = data.get("database_url")
        if not isinstance(url, str):
            return data  # missing: pydantic names it
        parsed = _database_url(url)
        if parsed.password is not None:
            raise ValueError(
                f"{env_name('database_url')} carries a password and "
                f"{env_name('database_password')} (or its _FILE) is set too; set one of them"
            )
        password = data["database_password"]
        plain = password.get_secret_value() if isinstance(password, SecretStr) else password
        url = parsed.set(password=str(plain)).render_as_string(hide_password=False)
        return {**data, "database_url": url}

    @model_validator(mode="after")
    def _database_tls(self) -> Self:
        query = _database_url(self.database_url).query
        in_url = [p for p in _URL_TLS_PARAMETERS if p in query]
        if in_url:
            raise ValueError(
                f"{env_name('database_url')} sets {', '.join(in_url)}: use "
                f"{env_name('database_sslmode')} and {env_name('database_ssl_root_cert_file')}"
                " instead"
            )
        if self.database_sslmode in ("disable", "prefer") and self.database_ssl_root_cert_file:
            raise ValueError(
                f"{env_name('database_ssl_root_cert_file')} is set but "
                f"{env_name('database_sslmode')}={self.database_sslmode} checks no certificate;"
                " use verify-full (or verify-ca, require)"
            )
        _check_readable(self.database_ssl_root_cert_file, "database_ssl_root_cert_file")
        _check_context(self.postgres_tls().connect_ssl, env_name("database_ssl_root_cert_file"))
        return self

    def postgres_tls(self) -> PostgresTls:
        """What `shared.db.engine.create_engine` needs besides the URL."""
        return PostgresTls(self.database_sslmode, self.database_ssl_root_cert_file)


class ConnectionSettings(DatabaseSettings):
    """Where PostgreSQL, Redis and Kafka are. Required: there are no defaults to fall back on."""

    redis_url: str = Field(description="redis://host:port/db")
    redis_url_file: Path | None = None
    redis_ssl_ca_file: Path | None = None
    redis_ssl_check_hostname: bool = True
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_username_file: Path | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    redis_key_prefix: str = Field(
        default="streamseg:", description="Prefix of every Redis key; tests use one per test"
    )

    @field_validator(
        "redis_url_file",
        "redis_ssl_ca_file",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "kafka_ssl_key_password",
        "kafka_ssl_key_password_file",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_username_file",
        "kafka_sasl_password",
        "kafka_sasl_password_file",
        mode="before",
    )
    @classmethod
    def _empty_connection_setting_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _connection_secrets(cls, data: Any) -> Any:
        return _from_files(
            data,
            ("redis_url", "kafka_ssl_key_password", "kafka_sasl_username", "kafka_sasl_password"),
        )

    @model_validator(mode="after")
    def _connection_tls(self) -> Self:
        self._check_kafka()
        if self.redis_ssl_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError(
                f"{env_name('redis_ssl_ca_file')} is set but {env_name('redis_url')} is not a "
                "rediss:// URL, so it would be ignored; use rediss://"
            )
        _check_readable(self.redis_ssl_ca_file, "redis_ssl_ca_file")
        if self.redis_ssl_ca_file is not None:
            ca = self.redis_ssl_ca_file
            _check_context(lambda: client_context(ca), env_name("redis_ssl_ca_file"))
        return self

    def _check_kafka(self) -> None:
        protocol = self.kafka_security_protocol
        sasl = {
            "kafka_sasl_mechanism": self.kafka_sasl_mechanism,
            "kafka_sasl_username": self.kafka_sasl_username,
            "kafka_sasl_password": self.kafka_sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [env_name(n) for n, v in sasl.items() if not v]
            if missing:
                raise ValueError(
                    f"{env_name('kafka_security_protocol')}={protocol} needs {', '.join(missing)}"
                    " (the password and username may come from a _FILE)"
                )
        else:
            stray = [env_name(n) for n, v in sasl.items() if v]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set, but {env_name('kafka_security_protocol')}="
                    f"{protocol} does not use SASL; use SASL_SSL (or SASL_PLAINTEXT)"
                )
        files = {
            "kafka_ssl_ca_file": self.kafka_ssl_ca_file,
            "kafka_ssl_cert_file": self.kafka_ssl_cert_file,
            "kafka_ssl_key_file": self.kafka_ssl_key_file,
            "kafka_ssl_key_password": self.kafka_ssl_key_password,
        }
        if not protocol.endswith("SSL"):
            stray = [env_name(n) for n, v in files.items() if v]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set, but {env_name('kafka_security_protocol')}="
                    f"{protocol} does not use TLS; use SSL or SASL_SSL"
                )
            return
        if self.kafka_ssl_key_file and not self.kafka_ssl_cert_file:
            raise ValueError(
                f"{env_name('kafka_ssl_key_file')} is set without "
                f"{env_name('kafka_ssl_cert_file')}, the certificate it belongs to"
            )
        for name in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file"):
            _check_readable(getattr(self, name), name)
        _check_context(
            self.kafka_security().ssl_context,
            ", ".join(env_name(n) for n, v in files.items() if v) or env_name("kafka_ssl_ca_file"),
        )

    def kafka_security(self) -> KafkaSecurity:
        """What every Kafka client factory in shared/kafka.py needs besides the bootstrap."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            ca_file=self.kafka_ssl_ca_file,
            cert_file=self.kafka_ssl_cert_file,
            key_file=self.kafka_ssl_key_file,
            key_password=_plain(self.kafka_ssl_key_password),
            check_hostname=self.kafka_ssl_check_hostname,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=_plain(self.kafka_sasl_password),
        )

    def redis_tls(self) -> RedisTls:
        """What `shared.redis.make_redis` needs besides the URL."""
        return RedisTls(self.redis_ssl_ca_file, self.redis_ssl_check_hostname)


def _plain(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
