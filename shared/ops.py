"""A small HTTP server for the worker services: /healthz, /readyz and /metrics.

The workers are not web apps; this keeps them free of a web framework while giving
operators and supervisors the same three endpoints the API serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

HealthCheck = Callable[[], Awaitable[dict[str, object]]]
"""Returns a report with at least `status` ("ok", "degraded" or "failing")."""


class OpsServer:
    """Serves liveness, readiness and metrics until `stop()`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        liveness: HealthCheck,
        readiness: HealthCheck,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host, self._port = host, port
        self._liveness, self._readiness = liveness, readiness
        self._registry = registry
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            status, ctype, body = await self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path in ("/healthz", "/readyz"):
            check = self._liveness if path == "/healthz" else self._readiness
            try:
                report = await asyncio.wait_for(check(), timeout=5)
            except Exception as exc:  # a failing check is the answer, not a crash
                report = {"status": "failing", "error": repr(exc)}
            code = "503 Service Unavailable" if report.get("status") == "failing" else "200 OK"
            return code, "application/json", orjson.dumps(report)
        return "404 Not Found", "application/json", b'{"error":"not found"}'
