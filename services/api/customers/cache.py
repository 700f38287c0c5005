"""Reading the Redis segment cache within a time bound, and not at all for a while once it is
clearly down, so that a slow or dead Redis costs each request at most `timeout_seconds`.

Only a connection error opens the circuit, never a time-out: when this process is busy, its
event loop reads Redis's answers late, and sending every request to PostgreSQL for a while
would turn a moment of overload into a lasting one (measured: it did). A Redis that hangs
therefore costs each request `timeout_seconds`, and no more.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import structlog
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.api.metrics import CACHE_FAILURES
from services.api.redis_pipe import RedisPipe
from shared.segment_cache import CachedCustomer, SegmentCache, customer_key

log = structlog.get_logger("api")

_DOCUMENT = msgspec.json.Decoder(CachedCustomer)


class CacheReader:
    """Single reads go through `pipe` when there is one (the hot path), batches through redis-py."""

    def __init__(
        self,
        cache: SegmentCache,
        pipe: RedisPipe | None,
        prefix: str,
        timeout_seconds: float,
        retry_after_seconds: float,
    ):
        self._cache = cache
        self._pipe = pipe
        self._prefix = prefix
        self._timeout = timeout_seconds
        self._retry_after = retry_after_seconds
        self._skip_until = 0.0

    @property
    def is_available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def get(self, customer_id: str) -> CachedCustomer | None:
        """The cached document, or None when Redis has none or cannot answer in time."""
        found = await self.get_many([customer_id])
        return found.get(customer_id)

    async def get_many(self, customer_ids: list[str]) -> dict[str, CachedCustomer]:
        if not customer_ids or not self.is_available:
            return {}
        try:
            async with asyncio.timeout(self._timeout):
                if len(customer_ids) == 1:
                    doc = await self._get_one(customer_ids[0])
                    found = {} if doc is None else {customer_ids[0]: doc}
                else:
                    found = await self._cache.get_many(customer_ids)
        except (TimeoutError, RedisError, OSError, msgspec.DecodeError) as exc:
            # A document this code cannot read is treated like a miss: PostgreSQL has the truth.
            CACHE_FAILURES.inc()
            self._note_failure(exc)
            log.warning("cache_read_failed", error=f"{type(exc).__name__}: {exc}")
            return {}
        return found

    async def _get_one(self, customer_id: str) -> CachedCustomer | None:
        if self._pipe is None:
            return await self._cache.get(customer_id)
        raw = await self._pipe.hget(customer_key(self._prefix, customer_id).encode(), b"doc")
        return None if raw is None else _DOCUMENT.decode(raw)

    def _note_failure(self, exc: Exception) -> None:
        if isinstance(exc, msgspec.DecodeError | TimeoutError | RedisTimeoutError):
            return
        if isinstance(exc, MaxConnectionsError):
            return  # this process is busy, Redis is not down
        self._skip_until = time.monotonic() + self._retry_after
