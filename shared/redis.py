"""Redis client factory with bounded timeouts, so a slow Redis never hangs a caller."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.security import NO_REDIS_TLS, RedisTls


def make_redis(
    url: str, *, tls: RedisTls = NO_REDIS_TLS, timeout_seconds: float = 0.5, retries: int = 2
) -> Redis:
    """A client that gives up after `timeout_seconds` per attempt and retries with jitter.

    A `rediss://` URL connects with TLS, trusting `tls.ca_file` (pass `conn.redis_tls()`);
    without one, the system's store."""
    return Redis.from_url(
        url,
        **tls.connection_options(url),
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(EqualJitterBackoff(cap=0.2, base=0.01), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        decode_responses=False,
    )
