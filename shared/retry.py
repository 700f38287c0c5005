"""Which errors are worth retrying, and how long to wait before the next try: one answer for
every loop (ingest, the outbox, the evaluators and the segmenter's background loops).

An error is retriable when trying the same work again, on a new connection if need be, can
succeed: the database, Kafka or Redis was unreachable, restarting, recovering, overloaded, or
aborted the transaction (deadlock, serialization). A bad record, a bug or a broken invariant
is not, and retrying it would only hide it. The decision is read from the error's type and
its SQLSTATE, never from its message, and a `retriable` flag on the error's class (ours,
aiokafka's) is honoured as it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from redis import exceptions as redis_errors
from sqlalchemy.exc import DBAPIError

log = structlog.get_logger("retry")

T = TypeVar("T")

# SQLSTATE classes and codes after which the same transaction can succeed on a new try.
_RETRIABLE_SQLSTATE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: too many connections, out of memory, disk full
    }
)
_RETRIABLE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: terminated by a fast or immediate shutdown
        "57P02",  # crash_shutdown: another backend crashed, the server resets
        "57P03",  # cannot_connect_now: starting up, in recovery, shutting down
        "57P05",  # idle_session_timeout: the session was closed, a new one is fine
        "55P03",  # lock_not_available
    }
)
_TRANSPORT_ERRORS = (
    OSError,  # includes ConnectionError; TimeoutError too since Python 3.11
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
)
# OSErrors about files: a missing or unreadable file stays missing however often it is read.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def is_retriable(exc: BaseException) -> bool:
    """Whether the work that raised `exc` may succeed if tried again after a pause.

    Wrappers are looked through: SQLAlchemy's `DBAPIError` (at `.orig`), then the exception
    chain (`raise ... from`, or an error raised while handling another), as Python prints it.
    The first error in that chain whose kind is known decides; none known: not retriable.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify(current)
        if verdict is not None:
            return verdict
        current = _wrapped(current)
    return False


def _classify(exc: BaseException) -> bool | None:
    """True or False when this error's own kind decides, None to look at what it wraps."""
    flag = getattr(type(exc), "retriable", None)
    if isinstance(flag, bool):
        return flag  # KafkaError subclasses, and ours (KafkaUnavailable, EventRejected, ...)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        # asyncpg's PostgresError, and SQLAlchemy's translation of it, carry the server's code.
        return sqlstate[:2] in _RETRIABLE_SQLSTATE_CLASSES or sqlstate in _RETRIABLE_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # The connection went away under the client ("connection is closed", "another
        # operation is in progress" after a cancelled one). A bad argument (asyncpg's
        # client-side DataError, a bad configuration) is a ValueError too and stays bad.
        return not isinstance(exc, ValueError | asyncpg.UnsupportedClientFeatureError)
    if isinstance(exc, _TRANSPORT_ERRORS):
        return not isinstance(exc, _FILE_ERRORS)
    return None


def _wrapped(exc: BaseException) -> BaseException | None:
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, capped: the wait before retry number `attempt`.

    The wait doubles from `initial_seconds` up to `maximum_seconds` and is then drawn from
    its upper half, so processes that failed together (a database restart) come back spread
    out, yet never sooner than half the nominal wait nor later than the cap.
    """

    initial_seconds: float = 0.05
    maximum_seconds: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.maximum_seconds or self.multiplier < 1:
            raise ValueError(f"{self!r}: need 0 < initial <= maximum and multiplier >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1 for the first retry)."""
        exponent = min(max(attempt, 1) - 1, 64)  # past 64 doublings every cap is reached
        nominal = min(self.maximum_seconds, self.initial_seconds * self.multiplier**exponent)
        return nominal * (0.5 + random.random() / 2)


class Retry:
    """The retry state of one loop: failures in a row, and the pause after each.

    ```
    retry = Retry(Backoff(0.1, 10.0), "outbox", stopping)
    while not stopping.is_set():
        try:
            await step()
            retry.succeeded()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            await retry.pause(exc)
    ```
    """

    def __init__(self, backoff: Backoff, name: str, stopping: asyncio.Event | None = None) -> None:
        self.backoff = backoff
        self.name = name
        self.failures = 0
        self._stopping = stopping

    def succeeded(self) -> None:
        """The work went through: the next failure starts the backoff from the beginning."""
        self.failures = 0

    async def pause(self, exc: BaseException, **context: Any) -> float:
        """Log a retriable failure and wait out the backoff, or until stopping is set.

        Returns the seconds it meant to wait."""
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        log.warning(
            "retrying",
            loop=self.name,
            attempt=self.failures,
            delay_s=round(delay, 3),
            error=f"{type(exc).__name__}: {exc}",
            **context,
        )
        if self._stopping is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        return delay


async def retrying(
    operation: Callable[[], Awaitable[T]],
    backoff: Backoff,
    name: str,
    *,
    attempts: int,
    stopping: asyncio.Event | None = None,
) -> T:
    """Run `operation` until it succeeds, retrying retriable errors up to `attempts` tries
    in all; the last error, or the first one that is not retriable, is raised."""
    retry = Retry(backoff, name, stopping)
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_retriable(exc) or retry.failures + 1 >= attempts:
                raise
            await retry.pause(exc)


async def repeat_until_stopped(
    step: Callable[[], Awaitable[object]],
    interval_seconds: float,
    stopping: asyncio.Event,
    retry: Retry,
) -> None:
    """Await `step` every `interval_seconds` until `stopping` is set. After a retriable
    error the next try follows the backoff instead; any other error ends the loop."""
    while not stopping.is_set():
        try:
            await step()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            await retry.pause(exc)
            continue
        retry.succeeded()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_seconds)
