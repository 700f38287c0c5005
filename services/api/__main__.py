"""`python -m services.api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logging import configure_logging
from shared.settings import ConnectionSettings


def cli() -> None:
    conn = ConnectionSettings()
    settings = ApiSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    uvicorn.run(create_app(conn), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    cli()
