"""The injectable clocks and their settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import (
    EventTimeClock,
    FixedClock,
    OffsetClock,
    SystemClock,
    clock_from_setting,
    is_running,
)

T = datetime(2026, 5, 1, 12, tzinfo=UTC)


def test_fixed_clock_stands_still_until_moved() -> None:
    clock = clock_from_setting(f"fixed:{T.isoformat()}")
    assert isinstance(clock, FixedClock)
    assert clock.now() == clock.now() == T
    clock.advance(timedelta(seconds=5))
    assert clock.now() == T + timedelta(seconds=5)


def test_offset_and_system_clocks_follow_the_wall() -> None:
    assert isinstance(clock_from_setting("system"), SystemClock)
    shifted = clock_from_setting("offset:-86400")
    assert isinstance(shifted, OffsetClock)
    lag = datetime.now(UTC) - shifted.now()
    assert timedelta(hours=23, minutes=59) < lag < timedelta(days=1, minutes=1)


def test_event_time_clock_only_moves_forward() -> None:
    clock = clock_from_setting("event-time")
    assert isinstance(clock, EventTimeClock)
    assert clock.now() == EventTimeClock.START
    clock.advance_to(T)
    clock.advance_to(T - timedelta(days=1))
    clock.advance_to(None)
    assert clock.now() == T


def test_only_an_event_time_clock_waits_for_its_first_watermark() -> None:
    clock = EventTimeClock()
    assert not is_running(clock)
    clock.advance_to(None)
    assert not is_running(clock)
    clock.advance_to(T)
    assert is_running(clock)
    assert is_running(SystemClock())
    assert is_running(FixedClock(EventTimeClock.START))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("fixed:2026-05-01T12:00:00", "needs a timezone"),
        ("lunar", "expected system"),
        ("system:now", "expected system"),
    ],
)
def test_bad_clock_settings_say_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        clock_from_setting(value)
