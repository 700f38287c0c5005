"""Checking presented API keys, with a short in-process cache so the hot path needs no query."""

from __future__ import annotations

import asyncio
import hmac
import time

from services.api.auth import repository
from services.api.auth.keys import Principal, hash_key, key_id_of
from services.api.database import Database

_MAX_CACHED = 10_000


class KeyVerifier:
    """Answers "which key is this?" from PostgreSQL, remembering each answer for `ttl_seconds`.

    A revoked key therefore stops working within `ttl_seconds` in every API process (at once
    in the process that revoked it). Unknown keys are remembered too, so guessing costs no query.
    """

    def __init__(self, db: Database, ttl_seconds: float) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._in_flight: dict[bytes, asyncio.Task[Principal | None]] = {}

    async def verify(self, presented: str) -> Principal | None:
        digest = hash_key(presented)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        # One lookup per key at a time, in a task of its own: a burst of requests with a key
        # not yet cached (at start-up, say) waits for one answer instead of emptying the pool,
        # and a caller that goes away does not cancel the others' lookup.
        task = self._in_flight.get(digest)
        if task is None:
            task = asyncio.create_task(self._lookup(presented, digest))
            self._in_flight[digest] = task
            task.add_done_callback(lambda done: self._settle(digest, done))
        return await asyncio.shield(task)

    def _settle(self, digest: bytes, task: asyncio.Task[Principal | None]) -> None:
        del self._in_flight[digest]
        if task.cancelled() or task.exception() is not None:
            return  # not remembered: the next request asks again
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, task.result())

    async def _lookup(self, presented: str, digest: bytes) -> Principal | None:
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        async with self._db.read() as conn:
            row = await repository.find_key(conn, key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.key_hash, digest):
            return None
        return Principal(row.id, row.name, frozenset(row.scopes))

    def forget(self, key_id: str) -> None:
        """Drop cached answers about one key (after it was revoked here)."""
        for digest, (_, principal) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]
