"""`python -m services.api`: serve the HTTP API with uvicorn, in one process or several."""

from __future__ import annotations

import sys

from services.api.server import config, serve, worker
from services.api.settings import ApiSettings
from services.api.workers import serve_workers
from shared.logging import configure_logging
from shared.settings import ConnectionSettings


def cli() -> None:
    settings = ApiSettings()
    if settings.workers == 1:
        sys.exit(serve())
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    # Bound as uvicorn binds; each worker builds its own app and server on it.
    sock = config("services.api.app:create_app", settings).bind_socket()
    sys.exit(serve_workers(settings.workers, sock, worker))


if __name__ == "__main__":
    cli()
