"""The uvicorn server of one API process: the whole API, or one of its workers (workers.py)."""

from __future__ import annotations

import gc
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.resources import StreamControl
from services.api.settings import ApiSettings
from services.api.workers import exit_with_parent
from shared.logging import configure_logging
from shared.settings import ConnectionSettings


class ApiServer(uvicorn.Server):
    """uvicorn waits for open responses before it shuts the app down; the change stream never
    ends by itself, so a stop signal first tells the streams to finish."""

    def __init__(self, config: uvicorn.Config, stop_streams: StreamControl) -> None:
        super().__init__(config)
        self._stop_streams = stop_streams

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._stop_streams.stop()
        super().handle_exit(sig, frame)


def config(app: FastAPI | str, settings: ApiSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Measured with bench/bench_api.py: a third less CPU per request than asyncio and h11.
        loop="uvloop",
        http="httptools",
    )


def serve(sockets: list[socket.socket] | None = None) -> int:
    """One API process; on `sockets` already bound (a worker), else on host and port."""
    conn = ConnectionSettings()
    settings = ApiSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    app = create_app(conn, settings)
    # Imports and the app's construction leave some hundred thousand long-lived objects;
    # frozen, the garbage collector's full passes no longer walk them on the request path.
    gc.collect()
    gc.freeze()
    server = ApiServer(config(app, settings), app.state.streams)
    server.run(sockets=sockets)
    return 0 if server.started else 3  # 3: start-up failed (as uvicorn.run() exits)


def worker(sock: socket.socket, parent_pid: int) -> None:
    """A worker process's target; here rather than in __main__, which a spawned process
    cannot import by name."""
    exit_with_parent(parent_pid)
    sys.exit(serve([sock]))
