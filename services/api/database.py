"""Units of work on PostgreSQL for the API, each bounded in time so no request hangs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import sqlalchemy.exc
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.errors import ApiError
from shared.db.engine import driver_connection

log = structlog.get_logger("api")

# Failures that mean "PostgreSQL is unreachable or too slow", answered with 503; anything
# else (a bug in a query, say) is left to surface as a 500.
UNAVAILABLE = (
    TimeoutError,
    OSError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    asyncpg.QueryCanceledError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class Database:
    """Hands out asyncpg connections from the engine's pool, for `timeout_seconds` at most."""

    def __init__(self, engine: AsyncEngine, timeout_seconds: float) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds

    @asynccontextmanager
    async def read(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for reads; nothing is committed."""
        try:
            async with asyncio.timeout(self.timeout_seconds), self.engine.connect() as sa_conn:
                yield await driver_connection(sa_conn)
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    @asynccontextmanager
    async def transaction(
        self, timeout_seconds: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """One unit of work: committed when the block ends, rolled back if it raises.

        `timeout_seconds` replaces the usual bound, for the statements too, for a unit of
        work that is expected to wait on locks (an activation)."""
        bound = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        try:
            async with asyncio.timeout(bound), self.engine.connect() as sa_conn:
                conn = await driver_connection(sa_conn)
                # The transaction is asyncpg's own: SQLAlchemy's begin() starts one only when
                # a statement goes through SQLAlchemy, and these go to the driver, so under
                # it each statement committed alone (locks and all).
                async with conn.transaction():
                    if timeout_seconds is not None:
                        # The session's statement_timeout is the short default; set locally,
                        # it ends with this transaction and the pooled connection is as it was.
                        await conn.execute(
                            "SELECT set_config('statement_timeout', $1, true)",
                            str(int(timeout_seconds * 1000)),
                        )
                    yield conn
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> ApiError:
    log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}")
    return ApiError(503, "database_unavailable", "PostgreSQL did not answer in time")
