"""The Redis copy of each customer's current segments, written by the segmenter after commit
and read by the API on its hot path.

One hash per customer, `{prefix}customer:{customer_id}`, with fields `v` (the evaluation
version) and `doc` (a JSON `CachedCustomer`). The write is a compare-and-set in Lua, so an
older evaluation never overwrites a newer one whatever order the writes arrive in.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec
from redis.asyncio import Redis


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


class CachedCustomer(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    version: int
    definition_version: int
    evaluated_at: datetime
    next_change_at: datetime | None
    segments: dict[str, CachedSegment]
    aggregates: CachedAggregates


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(CachedCustomer)

# KEYS[i] = hash key; ARGV[2i-1] = version, ARGV[2i] = document. Returns how many were
# written. One call per chunk of customers: per-key commands cost far more client-side.
_SET_IF_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local current = redis.call('HGET', key, 'v')
  if not current or tonumber(current) < version then
    redis.call('HSET', key, 'v', ARGV[2 * i - 1], 'doc', ARGV[2 * i])
    written = written + 1
  end
end
return written
"""
_CHUNK = 200
# Above every evaluation version, and exact as a Lua number (a double).
ERASED_VERSION = 2**53


def customer_key(prefix: str, customer_id: str) -> str:
    """The Redis key of one customer's document."""
    return f"{prefix}customer:{customer_id}"


class SegmentCache:
    """Writes and reads customers' documents under one key prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._set_if_newer = redis.register_script(_SET_IF_NEWER)

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
