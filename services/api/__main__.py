"""`python -m services.api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import sys
from types import FrameType

import uvicorn

from services.api.app import create_app
from services.api.resources import StreamControl
from services.api.settings import ApiSettings
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


def cli() -> None:
    conn = ConnectionSettings()
    settings = ApiSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    app = create_app(conn, settings)
    config = uvicorn.Config(
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
    server = ApiServer(config, app.state.streams)
    server.run()
    if not server.started:
        sys.exit(3)  # start-up failed (e.g. the schema is behind), as uvicorn.run() exits


if __name__ == "__main__":
    cli()
