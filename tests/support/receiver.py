"""A real HTTP/1.1 webhook receiver on loopback, for the tests and the benchmark.

Plain asyncio (keep-alive, Content-Length bodies), so it can count connections as well as
requests: the SSRF tests check that a refused target saw no connection at all. What it
answers is up to `behaviour(path, headers, body)`, which returns (status, delay_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # time.time() when the request was read


Behaviour = Callable[[str, dict[str, str], bytes], tuple[int, float]]


def always_ok(path: str, headers: dict[str, str], body: bytes) -> tuple[int, float]:
    return 200, 0.0


@dataclass
class Receiver:
    behaviour: Behaviour = always_ok
    keep: bool = True
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    count: int = 0
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                at = time.time()
                status, delay = self.behaviour(path, headers, body)
                self.count += 1
                if self.keep:
                    self.requests.append(Received(path, headers, body, status, at))
                if delay:
                    await asyncio.sleep(delay)
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
                    % status
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            writer.close()
