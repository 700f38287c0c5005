"""ASGI middleware: the request body limit, and per-route latency and status metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import REQUEST_SECONDS, REQUESTS


class BodyTooLargeError(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over `max_bytes` (or the limit `path_limits` gives its path): at once
    from Content-Length, or while it streams in."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        has_body = False
        for name, value in scope["headers"]:
            has_body = has_body or name in (b"content-length", b"transfer-encoding")
            if name == b"content-length" and not value.isdigit():
                await _send_error(send, 400, "bad_request", "Content-Length is not a number")
                return
            if name == b"content-length" and int(value) > limit:
                await _reject(send, limit)
                return
        if not has_body:
            # Nothing to count (a plain GET): the hot path skips the wrapping below.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await _reject(send, limit)


async def _reject(send: Send, limit: int) -> None:
    await _send_error(send, 413, "body_too_large", f"request body is larger than {limit} bytes")


async def _send_error(send: Send, status: int, error: str, detail: str) -> None:
    body = orjson.dumps({"error": error, "detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is never read, so the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Latency and status per route template (never the raw path, which would explode the
    label set); requests that match no route share the label `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            REQUEST_SECONDS.labels(method, label).observe(time.perf_counter() - started)
            REQUESTS.labels(method, label, str(status)).inc()
