"""One classification of retriable errors, on real exception instances, and the backoff."""

from __future__ import annotations

import asyncio
import time

import aiokafka.errors as kafka_errors
import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base
from redis import exceptions as redis_errors
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
)
from sqlalchemy.exc import DBAPIError

from services.ingest.repository import FencedError
from services.segmenter.outbox import KafkaUnavailable
from shared.events import EventRejected, RejectReason
from shared.retry import Backoff, Retry, is_retriable, retrying

_DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]


def through_sqlalchemy(error: Exception) -> Exception:
    """`error` as SQLAlchemy's asyncpg dialect hands it to the caller: translated to its
    DBAPI emulation (raised from the original), then wrapped in a DBAPIError."""
    try:
        try:
            raise error
        except Exception as exc:
            AsyncAdapt_asyncpg_connection._handle_exception_no_connection(_DBAPI, exc)
    except Exception as translated:
        return DBAPIError.instance("SELECT 1", None, translated, _DBAPI.Error)
    raise AssertionError("the dialect did not translate the error")


def chained(outer: Exception, inner: BaseException, *, explicit: bool = True) -> Exception:
    """`outer` raised while handling `inner` (`raise outer from inner` if explicit)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if explicit:
                raise outer from exc
            raise outer  # noqa: B904 - the implicit chain is what is under test
    except Exception as caught:
        return caught
    raise AssertionError("unreachable")


class FlaggedRetriable(Exception):
    retriable = True


RECOVERY = asyncpg.CannotConnectNowError("the database system is in recovery mode")

CASES: list[tuple[str, BaseException, bool]] = [
    # asyncpg, by SQLSTATE class or code
    ("recovery mode 57P03", RECOVERY, True),
    ("crash of another backend 57P02", asyncpg.CrashShutdownError("terminating"), True),
    ("admin shutdown 57P01", asyncpg.AdminShutdownError("terminating"), True),
    ("deadlock 40P01", asyncpg.DeadlockDetectedError("deadlock detected"), True),
    ("serialization 40001", asyncpg.SerializationError("could not serialize"), True),
    ("too many connections 53300", asyncpg.TooManyConnectionsError("too many"), True),
    ("out of memory 53200", asyncpg.OutOfMemoryError("out of memory"), True),
    ("lock not available 55P03", asyncpg.LockNotAvailableError("could not obtain lock"), True),
    ("connection does not exist 08003", asyncpg.ConnectionDoesNotExistError("closed"), True),
    ("connection failure 08006", asyncpg.ConnectionFailureError("failure"), True),
    ("unique violation 23505", asyncpg.UniqueViolationError("duplicate key"), False),
    ("undefined table 42P01", asyncpg.UndefinedTableError("no such table"), False),
    ("numeric out of range 22003", asyncpg.NumericValueOutOfRangeError("out of range"), False),
    ("statement timeout 57014", asyncpg.QueryCanceledError("canceling statement"), False),
    # asyncpg, client side
    ("connection is closed", asyncpg.InterfaceError("connection is closed"), True),
    ("operation in progress", asyncpg.InterfaceError("another operation is in progress"), True),
    ("bad query argument", asyncpg_base.DataError("invalid input for query argument $1"), False),
    # through SQLAlchemy
    ("wrapped recovery mode", through_sqlalchemy(RECOVERY), True),
    ("wrapped interface error", through_sqlalchemy(asyncpg.InterfaceError("closed")), True),
    ("wrapped unique violation", through_sqlalchemy(asyncpg.UniqueViolationError("dup")), False),
    # transport
    ("connection refused", ConnectionRefusedError(111, "Connect call failed"), True),
    ("connection reset", ConnectionResetError(104, "reset by peer"), True),
    ("timeout", TimeoutError(), True),
    ("os error", OSError(113, "no route to host"), True),
    ("missing file", FileNotFoundError(2, "no such file"), False),
    # Kafka, by the flag aiokafka sets on each error class
    ("kafka connection", kafka_errors.KafkaConnectionError("down"), True),
    ("not leader", kafka_errors.NotLeaderForPartitionError(), True),
    ("request timed out", kafka_errors.RequestTimedOutError(), True),
    ("message too large", kafka_errors.MessageSizeTooLargeError(), False),
    ("illegal state", kafka_errors.IllegalStateError(), False),
    # Redis
    ("redis connection", redis_errors.ConnectionError("Connection refused"), True),
    ("redis timeout", redis_errors.TimeoutError("Timeout reading"), True),
    ("redis loading", redis_errors.BusyLoadingError("loading"), True),
    ("redis wrong type", redis_errors.ResponseError("WRONGTYPE"), False),
    # our own flags
    ("kafka unavailable", KafkaUnavailable("no broker"), True),
    ("a class flagged retriable", FlaggedRetriable(), True),
    ("fenced", FencedError("partition moved"), False),
    ("rejected event", EventRejected(RejectReason.UNDECODABLE, None, "not json"), False),
    # anything else
    ("a bug", KeyError("x"), False),
    ("runtime error", RuntimeError("broken invariant"), False),
    # chains
    ("raised from a reset", chained(RuntimeError("batch failed"), ConnectionResetError()), True),
    (
        "raised while handling a reset",
        chained(ValueError("x"), ConnectionResetError(), explicit=False),
        True,
    ),
    ("flag beats its cause", chained(FencedError("moved"), ConnectionResetError()), False),
    ("unknown over unknown", chained(RuntimeError("a"), KeyError("b")), False),
    (
        "a bug raised from a permanent error",
        chained(KeyError("k"), asyncpg.UniqueViolationError("d")),
        False,
    ),
]


@pytest.mark.parametrize(("error", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_is_retriable(error: BaseException, expected: bool) -> None:
    assert is_retriable(error) is expected


def _key_error_from_none_after_a_reset() -> None:
    try:
        raise ConnectionResetError()
    except ConnectionResetError:
        raise KeyError("k") from None


def test_context_suppressed_by_from_none_is_not_looked_at() -> None:
    with pytest.raises(KeyError) as caught:
        _key_error_from_none_after_a_reset()
    assert caught.value.__context__ is not None
    assert not is_retriable(caught.value)


def test_a_cyclic_chain_ends() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert not is_retriable(a)


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.1, 2.0)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (1000, 2.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays), (attempt, min(delays))
        assert len(set(delays)) > 100  # spread out, not in lockstep


@pytest.mark.parametrize(("initial", "maximum", "multiplier"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_backoff_refuses_nonsense(initial: float, maximum: float, multiplier: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, maximum, multiplier)


async def test_retrying_retries_retriable_errors_then_returns() -> None:
    failures = [ConnectionResetError(), asyncpg.DeadlockDetectedError("deadlock")]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await retrying(flaky, Backoff(0.001, 0.002), "test", attempts=3) == "done"


async def test_retrying_raises_a_permanent_error_at_once_and_the_last_after_attempts() -> None:
    calls = 0

    async def permanent() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.UniqueViolationError("dup")

    with pytest.raises(asyncpg.UniqueViolationError):
        await retrying(permanent, Backoff(0.001, 0.002), "test", attempts=5)
    assert calls == 1

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError()

    calls = 0
    with pytest.raises(ConnectionRefusedError):
        await retrying(down, Backoff(0.001, 0.002), "test", attempts=3)
    assert calls == 3


async def test_a_pause_ends_when_stopping_and_success_resets_the_backoff() -> None:
    stopping = asyncio.Event()
    retry = Retry(Backoff(30.0, 30.0), "test", stopping)
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()
    assert await retry.pause(ConnectionResetError()) >= 15.0
    assert time.monotonic() - started < 5
    assert retry.failures == 1
    retry.succeeded()
    assert retry.failures == 0


def test_the_wrapped_recovery_error_of_issue_10_is_retriable() -> None:
    wrapped = through_sqlalchemy(RECOVERY)
    assert isinstance(wrapped, DBAPIError)
    assert "the database system is in recovery mode" in str(wrapped)
    assert is_retriable(wrapped)
