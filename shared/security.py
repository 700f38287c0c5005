"""Connection security as typed values: TLS for Kafka, PostgreSQL and Redis, and Kafka's SASL
credentials. The settings build them (shared/settings.py); the client factories take them
(shared/kafka.py, shared/db/engine.py, shared/redis.py), so every client is made with one.

The defaults are what the services did before these settings existed: Kafka in plaintext,
PostgreSQL with `sslmode=prefer`, Redis in TLS exactly when its URL says `rediss://`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]


def client_context(
    ca_file: Path | None,
    *,
    verify: bool = True,
    check_hostname: bool = True,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A TLS client context: trusting `ca_file` (the system's store when None), checking the
    server's name unless told not to, presenting `cert_file` when given. `verify=False`
    accepts any server certificate (PostgreSQL's `sslmode=require` without a root cert)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.check_hostname = verify and check_hostname
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(
            str(cert_file), str(key_file) if key_file else None, password=key_password
        )
    return context


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How a Kafka client authenticates and encrypts: one value for every client we make.

    The settings check that the fields agree (a SASL protocol has a mechanism, username and
    password; TLS files only with a TLS protocol); a value made in code is trusted."""

    protocol: KafkaProtocol = "PLAINTEXT"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client's TLS context, or None in plaintext. Raises OSError or ssl.SSLError
        when a file cannot be read or parsed."""
        if not self.uses_tls:
            return None
        return client_context(
            self.ca_file,
            check_hostname=self.check_hostname,
            cert_file=self.cert_file,
            key_file=self.key_file,
            key_password=self.key_password,
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's consumer, producer and admin client."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        return options


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True, slots=True)
class PostgresTls:
    """libpq's `sslmode` and `sslrootcert`, as asyncpg's `ssl` argument.

    `prefer` (the default, as libpq's) tries TLS without checking the certificate and falls
    back to plaintext. `require` insists on TLS; like libpq it checks the certificate against
    the root cert when one is set, and accepts any otherwise. `verify-ca` checks the chain,
    `verify-full` the chain and the host name; without a root cert both trust the system's
    store (libpq's `sslrootcert=system`), which is what managed services' public CAs need.
    """

    sslmode: SslMode = "prefer"
    root_cert_file: Path | None = None

    def connect_ssl(self) -> bool | str | ssl.SSLContext:
        """The value of asyncpg's `ssl` connect argument."""
        if self.sslmode == "disable":
            return False
        if self.sslmode == "prefer":
            # asyncpg's own mode: a TLS attempt without verification, then plaintext.
            return "prefer"
        verify = self.sslmode != "require" or self.root_cert_file is not None
        return client_context(
            self.root_cert_file, verify=verify, check_hostname=self.sslmode == "verify-full"
        )


PREFER = PostgresTls()


@dataclass(frozen=True, slots=True)
class RedisTls:
    """What a `rediss://` connection trusts; a `redis://` URL takes none of it."""

    ca_file: Path | None = None
    check_hostname: bool = True

    def connection_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for redis-py's `from_url` with `url`. Raises ValueError for a CA
        with a URL that is not `rediss://`, which would otherwise be ignored."""
        if not url.startswith("rediss://"):
            if self.ca_file is not None:
                raise ValueError("a Redis CA file is set, but the Redis URL is not rediss://")
            return {}
        return {
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": str(self.ca_file) if self.ca_file else None,
            "ssl_check_hostname": self.check_hostname,
        }


NO_REDIS_TLS = RedisTls()
