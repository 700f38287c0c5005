"""The Redis copy of each customer's current segments, written by the segmenter after commit
and read by the API on its hot path.

One hash per customer, `{prefix}customer:{customer_id}`, with fields `v` (the evaluation
version) and `doc` (a JSON `CachedCustomer`). The write is a compare-and-set in Lua, so an
older evaluation never overwrites a newer one whatever order the writes arrive in.

Stale before commit (`mark_stale`): before the segmenter commits evaluation N of a customer,
its document is dropped and the field `dirty` raised to N; a document below `dirty` is then
refused, so a delayed write of an older evaluation cannot bring one back. Once N is committed,
Redis therefore holds no document for the customer, or one at least as new as N, whether or
not N's own write after commit succeeds: readers need nothing but `doc`, a missing one sends
them to PostgreSQL. A transaction that rolls back after the mark leaves only a miss, and the
customer's evaluation again, under the same version, clears it. A mark that fails is made
good after commit by the segmenter's repair loop (services/segmenter/cache.py).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError


class CachedSegment(msgspec.Struct, frozen=True, kw_only=True):
    segment: str
    since: datetime
    reason: str


class CachedAggregates(msgspec.Struct, frozen=True, kw_only=True):
    order_count: int
    net_spend: Decimal
    spend_365d: Decimal
    orders_365d: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    interaction_count: int
    interactions_30d: int
    last_interaction_at: datetime | None
    open_cart_at: datetime | None
    # Declared event metrics at the evaluation (shared.facts.metric_values): counts as
    # numbers, sums as decimal text, first and last times as RFC 3339 text.
    metrics: dict[str, str | int | None] = {}
    counted_since: dict[str, datetime] = {}


class CachedCustomer(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    version: int
    definition_version: int
    evaluated_at: datetime
    next_change_at: datetime | None
    segments: dict[str, CachedSegment]
    aggregates: CachedAggregates
    scores: dict[str, int | None] = {}  # documents written before scores existed have none
    # The audiences the customer is in (segment `member`), apart from the dimensions.
    audiences: dict[str, CachedSegment] = {}


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(CachedCustomer)

# KEYS[i] = hash key; ARGV[2i-1] = version, ARGV[2i] = document. Returns how many were
# written. One call per chunk of customers: per-key commands cost far more client-side.
_SET_IF_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local fields = redis.call('HMGET', key, 'v', 'dirty')
  local current, dirty = tonumber(fields[1]), tonumber(fields[2])
  if (not current or current < version) and (not dirty or dirty <= version) then
    redis.call('HSET', key, 'v', ARGV[2 * i - 1], 'doc', ARGV[2 * i])
    if dirty then
      redis.call('HDEL', key, 'dirty')
    end
    written = written + 1
  end
end
return written
"""
# KEYS[i] = hash key; ARGV[i] = the version about to commit (or committed). A document at
# least that new stays (a mark that arrives late, after its own write; erasure's marker);
# any older one goes, and `dirty` keeps the highest version marked. Returns how many went.
_MARK_STALE = """
local dropped = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[i])
  local fields = redis.call('HMGET', key, 'v', 'dirty')
  local current, dirty = tonumber(fields[1]), tonumber(fields[2])
  if not current or current < version then
    dropped = dropped + redis.call('HDEL', key, 'doc')
    if not dirty or dirty < version then
      redis.call('HSET', key, 'dirty', ARGV[i])
    end
  end
end
return dropped
"""
_CHUNK = 200
# Marks carry no document: a whole batch (500 by default) in one call, one round trip.
_MARK_CHUNK = 1000
# Above every evaluation version, and exact as a Lua number (a double).
ERASED_VERSION = 2**53


# What a Redis call that did not happen (or may not have) raises: refused, unreachable, timed
# out, or an error reply (out of memory, read-only replica).
CACHE_ERRORS = (RedisError, OSError)


def customer_key(prefix: str, customer_id: str) -> str:
    """The Redis key of one customer's document."""
    return f"{prefix}customer:{customer_id}"


class SegmentCache:
    """Writes and reads customers' documents under one key prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._set_if_newer = redis.register_script(_SET_IF_NEWER)
        self._mark_stale = redis.register_script(_MARK_STALE)

    async def put_many(self, docs: list[CachedCustomer]) -> int:
        """Write documents that are newer than what Redis holds; returns how many were."""
        written = 0
        for start in range(0, len(docs), _CHUNK):
            chunk = docs[start : start + _CHUNK]
            args: list[int | bytes] = []
            for doc in chunk:
                args += (doc.version, _encoder.encode(doc))
            keys = [customer_key(self._prefix, doc.customer_id) for doc in chunk]
            written += int(await self._set_if_newer(keys=keys, args=args))
        return written

    async def mark_stale(self, versions: list[tuple[str, int]]) -> int:
        """Drop the documents older than each (customer id, version) and refuse any older
        one from now on; returns how many documents were dropped."""
        dropped = 0
        for start in range(0, len(versions), _MARK_CHUNK):
            chunk = versions[start : start + _MARK_CHUNK]
            keys = [customer_key(self._prefix, cid) for cid, _ in chunk]
            dropped += int(await self._mark_stale(keys=keys, args=[v for _, v in chunk]))
        return dropped

    async def get(self, customer_id: str) -> CachedCustomer | None:
        """The cached document, or None when Redis has none for this customer."""
        raw = await self._redis.hget(customer_key(self._prefix, customer_id), "doc")
        return None if raw is None else _decoder.decode(raw)

    async def get_many(self, customer_ids: list[str]) -> dict[str, CachedCustomer]:
        """Documents of the customers Redis has; missing ones are left out."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in customer_ids:
                pipe.hget(customer_key(self._prefix, cid), "doc")
            raws = await pipe.execute()
        return {
            cid: _decoder.decode(raw)
            for cid, raw in zip(customer_ids, raws, strict=True)
            if raw is not None
        }

    async def delete(self, customer_id: str) -> None:
        """Drop one customer's document."""
        await self._redis.delete(customer_key(self._prefix, customer_id))

    async def forget(self, customer_id: str, hold_seconds: int) -> None:
        """Drop an erased customer's document and refuse any for `hold_seconds`.

        What stays is the version field alone, higher than any real version: a document
        written after the erasure by an evaluation that read the customer before it is
        refused by `put_many`, and readers find no document."""
        key = customer_key(self._prefix, customer_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, "v", str(ERASED_VERSION))
            pipe.expire(key, hold_seconds)
            await pipe.execute()
