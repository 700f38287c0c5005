"""Which stored size series answers a request, and in what step (services/api/stats/service.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.api.stats.service import StepError, choose_series, columns, parse_step

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEPT = {300: T0 - 7 * DAY, 3600: T0 - 90 * DAY, 86400: T0 - 730 * DAY}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("300s", 300), ("5m", 300), ("1h", 3600), ("1d", 86400), ("15m", 900)],
)
def test_steps_parse(text: str, seconds: int) -> None:
    assert parse_step(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "5 m", "1w", "1.5h", "h", "123456789s"])
def test_bad_steps_name_the_problem(text: str) -> None:
    with pytest.raises(StepError, match="not a duration"):
        parse_step(text)


@pytest.mark.parametrize(
    ("since", "until", "step", "chosen"),
    [
        # No step: the finest that keeps the answer within 500 points.
        (T0 - DAY, T0, None, (300, 300)),
        (T0 - 7 * DAY, T0, None, (3600, 3600)),
        (T0 - 30 * DAY, T0, None, (3600, 21600)),
        (T0 - 365 * DAY, T0, None, (86400, 86400)),
        # A step: the coarsest stored one that divides it and reaches back to `since`.
        (T0 - DAY, T0, 3600, (3600, 3600)),
        (T0 - DAY, T0, 900, (300, 900)),
        (T0 - 15 * DAY, T0, 300, (300, 300)),  # not reaching back to `since`: the only one
        (T0 - 30 * DAY, T0, 86400, (86400, 86400)),
    ],
)
def test_the_series_read(
    since: datetime, until: datetime, step: int | None, chosen: tuple[int, int]
) -> None:
    assert choose_series(KEPT, since, until, step) == chosen


def test_nothing_stored_is_no_series() -> None:
    assert choose_series({}, T0 - DAY, T0, None) is None


def test_a_step_no_stored_one_divides_or_too_many_points_is_refused() -> None:
    with pytest.raises(StepError, match="not a multiple of a stored one"):
        choose_series(KEPT, T0 - DAY, T0, 420)
    with pytest.raises(StepError, match="at most 5000"):
        choose_series(KEPT, T0 - 730 * DAY, T0, 300)


def test_columns_line_up_and_an_absent_segment_is_empty() -> None:
    rows = [
        {"bucket": T0, "dimension": "d", "segment": "a", "customers": 3},
        {"bucket": T0, "dimension": "d", "segment": "b", "customers": 1},
        {"bucket": T0 + DAY, "dimension": "d", "segment": "a", "customers": 4},
    ]
    at, series = columns(rows)
    assert at == [T0, T0 + DAY]
    assert series == [
        {"dimension": "d", "segment": "a", "customers": [3, 4]},
        {"dimension": "d", "segment": "b", "customers": [1, 0]},
    ]
