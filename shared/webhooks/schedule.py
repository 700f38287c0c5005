"""When a failed delivery is tried again: exponential backoff with full jitter, bounded in
total time.

Attempt n (1 for the first retry) waits a uniformly random time in [0, min(cap, base·2^(n-1))]
("full jitter"): receivers that failed together are not hit again together. A delivery whose
next attempt would fall after its deadline fails. The deadline is the total after the
delivery's first attempt came due (its turn in its lane, or its replay), so that a delivery
held back behind a failing one still gets its whole schedule.
A `Retry-After` from the receiver raises the wait to what it asked, within the same cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    initial_seconds: float = 5.0
    maximum_seconds: float = 3600.0
    total_seconds: float = 86_400.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.maximum_seconds or self.total_seconds <= 0:
            raise ValueError(f"{self!r}: need 0 < initial <= maximum and total > 0")

    def ceiling(self, attempt: int) -> float:
        """The largest wait before retry `attempt` (1 for the first retry)."""
        exponent = min(max(attempt, 1) - 1, 64)
        return float(min(self.maximum_seconds, self.initial_seconds * 2.0**exponent))

    def next_attempt_at(
        self,
        attempts: int,
        now: datetime,
        deadline: datetime,
        *,
        retry_after_seconds: float | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after `attempts` failed attempts, or None: the deadline is past."""
        ceiling = self.ceiling(attempts)
        wait = (rng or random).uniform(0.0, ceiling)
        if retry_after_seconds is not None:
            wait = max(wait, min(retry_after_seconds, self.maximum_seconds))
        at = now + timedelta(seconds=wait)
        return at if at <= deadline else None

    def deadline(self, start: datetime) -> datetime:
        return start + timedelta(seconds=self.total_seconds)
