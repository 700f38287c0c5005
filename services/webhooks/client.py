"""The HTTP client that delivers webhooks, and the connection guard against SSRF.

httpx resolves a URL's host where it connects: in the network backend. The guard is that
backend. It resolves the host itself, refuses the connection if any address is not public
(shared/webhooks/targets.py), and connects to an address it checked, so no second lookup can
switch the target between check and connect (DNS rebinding). TLS still verifies the
certificate against the URL's host name, which httpcore passes separately.

Redirects are not followed (Standard Webhooks counts a 3xx as a failure), and no proxy is
taken from the environment: a proxy would make the connection, and the check, elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream
from httpcore._backends.auto import AutoBackend
from httpcore._backends.base import SOCKET_OPTION

from shared.webhooks.targets import TargetRefusedError, check_addresses, resolve


class GuardedBackend(AsyncNetworkBackend):
    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        try:
            addresses = check_addresses(
                host, await resolve(host, port), allow_private=self._allow_private
            )
        except TargetRefusedError as exc:
            raise RefusedConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                stream: AsyncNetworkStream = await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
                return stream
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> AsyncNetworkStream:
        raise RefusedConnectError("webhooks are never sent to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class RefusedConnectError(httpcore.ConnectError):
    """The guard refused the target; httpx raises it as a ConnectError caused by this."""


def refusal(exc: BaseException) -> str | None:
    """The guard's reason if `exc` (an httpx error) is its refusal, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RefusedConnectError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


class Clients:
    """Connections to each target origin (scheme, host, port): at most `per_origin`, each an
    httpx client of one keep-alive connection, lent to one request at a time.

    httpcore's pool looks at every one of its connections for each request and at every
    queued request when one ends. Measured here, one pool of 32 connections made 177
    requests/s where 32 pools of one connection made 1,314 (docs/performance.md): so a pool
    per connection, and the waiting is ours. The bound is also how hard one receiver is
    pressed by one dispatcher.
    """

    def __init__(self, *, allow_private: bool, per_origin: int, timeout_seconds: float) -> None:
        self._allow_private = allow_private
        self._per_origin = per_origin
        self._timeout_seconds = timeout_seconds
        self._origins: dict[tuple[str, str, int | None], _Origin] = {}

    @contextlib.asynccontextmanager
    async def connection(self, url: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client for `url`'s origin, once one is free."""
        parts = urlsplit(url)
        key = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(asyncio.Queue(), 0)
        if origin.idle.empty() and origin.made < self._per_origin:
            origin.made += 1
            client = make_client(
                allow_private=self._allow_private,
                max_connections=1,
                timeout_seconds=self._timeout_seconds,
            )
        else:
            client = await origin.idle.get()
        try:
            yield client
        finally:
            origin.idle.put_nowait(client)

    async def aclose(self) -> None:
        origins, self._origins = self._origins, {}
        for origin in origins.values():
            while not origin.idle.empty():
                with contextlib.suppress(Exception):
                    await origin.idle.get_nowait().aclose()


@dataclass
class _Origin:
    idle: asyncio.Queue[httpx.AsyncClient]
    made: int


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One context for every client: loading the CA store took a thirtieth of a second."""
    return ssl.create_default_context()


def make_client(
    *, allow_private: bool, max_connections: int, timeout_seconds: float
) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through the guard."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx builds its pool with the default backend and takes no backend of its own; the
    # pool is rebuilt here with the guard (httpx pinned in pyproject.toml).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
        network_backend=GuardedBackend(allow_private=allow_private),
    )
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_seconds),
        headers={"user-agent": "StreamSeg-Webhooks/1"},
    )
