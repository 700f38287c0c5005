"""One Redis connection that every request of the process shares, for the hot cache read.

redis-py checks a connection out of its pool for each command, wraps each socket operation
in a task with a time-out and parses the reply in Python: about 0.15 ms of CPU per HGET on the
development VM, four times what a plain protocol costs (docs/performance.md). Redis answers
the commands of one connection in order, so concurrent requests can share it: each writes its
command and waits for the reply at its place in the queue. A caller that gives up (its own
time-out) keeps its place, and its reply is read and dropped. Only what the hot read needs:
HGET, after AUTH and SELECT from the URL; anything else stays with redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from redis.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ResponseError

Reply = bytes | int | None | ResponseError

# A reply this late means the connection is stuck, not busy: it is dropped and opened afresh.
STUCK_AFTER_SECONDS = 1.0
_SPOKEN = frozenset({"host", "port", "path", "db", "username", "password"})


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


class RedisPipe:
    """`hget()` may be called by any number of tasks at once; `close()` is safe to repeat."""

    def __init__(
        self, address: dict[str, Any], connect_timeout_seconds: float, stuck_after_seconds: float
    ) -> None:
        self._address = address
        self._connect_timeout = connect_timeout_seconds
        self._stuck_after = stuck_after_seconds
        self._lock = asyncio.Lock()
        self._current: _Connection | None = None  # connected, and AUTH and SELECT done

    @classmethod
    def from_url(
        cls,
        url: str,
        connect_timeout_seconds: float,
        stuck_after_seconds: float = STUCK_AFTER_SECONDS,
    ) -> RedisPipe | None:
        """A pipe for a plain TCP or Unix socket URL; None for what it does not speak (TLS)."""
        # redis-py's reading of the URL, so that both clients reach the same server and db.
        address: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        kind = address.pop("connection_class", None)
        if kind not in (None, UnixDomainSocketConnection) or not set(address) <= _SPOKEN:
            return None
        return cls(address, connect_timeout_seconds, stuck_after_seconds)

    async def hget(self, key: bytes, field: bytes) -> bytes | None:
        """The field's value; ConnectionError (an OSError) when Redis cannot be reached."""
        try:
            reply = await (await self._connected()).call(b"HGET", key, field)
        except ConnectionError:
            # Once more, on a fresh connection: the shared one may have died since its last use.
            reply = await (await self._connected()).call(b"HGET", key, field)
        if isinstance(reply, ResponseError):
            raise reply
        if isinstance(reply, int):
            raise ResponseError(f"unexpected reply to HGET: {reply}")
        return reply

    def close(self) -> None:
        if self._current is not None:
            self._current.abort()

    async def _connected(self) -> _Connection:
        if self._current is not None and self._current.is_open:
            return self._current
        async with self._lock:
            if self._current is None or not self._current.is_open:
                self._current = await self._open()
        return self._current

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        a = self._address
        conn = _Connection(self._stuck_after)
        async with asyncio.timeout(self._connect_timeout):
            if "path" in a:
                await loop.create_unix_connection(lambda: conn, a["path"])
            else:
                host, port = a.get("host", "localhost"), a.get("port", 6379)
                await loop.create_connection(lambda: conn, host, port)
            try:
                if "password" in a:
                    user = [a["username"].encode()] if a.get("username") else []
                    await conn.checked(b"AUTH", *user, a["password"].encode())
                if a.get("db"):
                    await conn.checked(b"SELECT", b"%d" % a["db"])
            except BaseException:
                conn.abort()
                raise
        return conn


class _Connection(asyncio.Protocol):
    def __init__(self, stuck_after_seconds: float) -> None:
        self._stuck_after = stuck_after_seconds
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._buffer = bytearray()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def checked(self, *args: bytes) -> None:
        reply = await self.call(*args)
        if isinstance(reply, ResponseError):
            raise reply

    async def call(self, *args: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._waiting and now - self._waiting[0][1] > self._stuck_after:
            self.abort()
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("the Redis connection is closed")
        reply: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append((reply, now))
        self._transport.write(_command(*args))
        return await reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's does not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        waiting, self._waiting = self._waiting, deque()
        for reply, _ in waiting:
            if not reply.done():
                reply.set_exception(ConnectionError(f"the Redis connection was lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        try:
            while (parsed := self._parse(start)) is not None:
                value, start = parsed
                reply, _ = self._waiting.popleft()  # IndexError: a reply nobody asked for
                if not reply.done():  # else its caller has given up
                    reply.set_result(value)
        except (ValueError, IndexError):
            self.abort()  # out of step with the server: start again on a new connection
            return
        del self._buffer[:start]

    def _parse(self, start: int) -> tuple[Reply, int] | None:
        """The reply at `start` and where the next one begins; None while it is incomplete."""
        buf = self._buffer
        end = buf.find(b"\r\n", start)
        if end < 0:
            return None
        kind, head = buf[start], bytes(buf[start + 1 : end])
        if kind == ord("$"):
            size = int(head)
            if size < 0:
                return None, end + 2
            if len(buf) < end + 4 + size:
                return None
            return bytes(buf[end + 2 : end + 2 + size]), end + 4 + size
        if kind == ord("+"):
            return head, end + 2
        if kind == ord(":"):
            return int(head), end + 2
        if kind == ord("-"):
            return ResponseError(head.decode(errors="replace")), end + 2
        raise ValueError(f"unexpected Redis reply type {chr(kind)!r}")
