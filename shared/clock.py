"""Injectable clocks, so that replays, backfills and tests are deterministic.

A service's `clock` setting (e.g. STREAMSEG_SEGMENTER_CLOCK) selects one: `system` (the
default), `fixed:<RFC 3339>` (time stands still until moved), `offset:<seconds>` (the
system clock shifted), or `event-time` (the latest event time ingested, for replays and
backfills: time moves as the events do).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class FixedClock:
    """Stands still until `set` or `advance` moves it."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> datetime:
        return self._at

    def set(self, at: datetime) -> None:
        self._at = at

    def advance(self, delta: timedelta) -> None:
        self._at += delta


class EventTimeClock:
    """Time is the latest event time seen; whoever owns the clock moves it with `advance_to`."""

    # Before any event, nothing can be due: the earliest time an event may carry.
    START = datetime(2000, 1, 1, tzinfo=UTC)

    def __init__(self) -> None:
        self._at = self.START

    def now(self) -> datetime:
        return self._at

    @property
    def has_started(self) -> bool:
        """Whether any event time has been seen: until then "now" is only a placeholder."""
        return self._at > self.START

    def advance_to(self, watermark: datetime | None) -> None:
        """Move forward to `watermark`; event time never runs backwards."""
        if watermark is not None and watermark > self._at:
            self._at = watermark


def is_running(clock: Clock) -> bool:
    """Whether `clock.now()` is a real time to evaluate at. An event-time clock is not until
    the first watermark: facts evaluated at its placeholder start would all lie in the
    future, and a customer whose orders are all ahead of "now" has no next change to wait for.
    """
    return not isinstance(clock, EventTimeClock) or clock.has_started


def present(clock: Clock) -> datetime:
    """The real present as `clock` has it, for checks such as "not from the future". An
    event-time clock replays the past, so its present is the system clock's."""
    return datetime.now(UTC) if isinstance(clock, EventTimeClock) else clock.now()


def clock_from_setting(value: str) -> Clock:
    """Parse a STREAMSEG_CLOCK value; raise ValueError naming what is wrong."""
    kind, _, arg = value.partition(":")
    if kind == "system" and not arg:
        return SystemClock()
    if kind == "fixed":
        at = datetime.fromisoformat(arg)
        if at.tzinfo is None:
            raise ValueError(f"clock {value!r}: the fixed time needs a timezone")
        return FixedClock(at)
    if value == "event-time":
        return EventTimeClock()
    if kind == "offset":
        return OffsetClock(timedelta(seconds=float(arg)))
    raise ValueError(
        f"clock {value!r}: expected system, fixed:<RFC 3339>, offset:<seconds> or event-time"
    )
