"""How often a process's evaluation loops lease, so that batches gather at low rates.

Each batch pays a dozen round trips (lease, load, read, write, settle, commit, release)
whatever its size. While a backlog lasts, the loops lease full batches back to back and
overlap their waits on PostgreSQL. When less than a full batch is due, the loops take turns
instead: one lease per `interval_seconds` for the whole process, so that at 50 events/s a
batch holds about ten customers rather than one or two, and an idle process looks at the
queue a few times a second rather than once per loop per poll. What that costs is latency,
at most `interval_seconds` per customer and only while the rate is low.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LeasePacer:
    """Shared by one process's evaluation loops."""

    def __init__(self, interval_seconds: float, full_batch: int) -> None:
        self._interval = interval_seconds
        self._full = full_batch
        self._turn = asyncio.Lock()
        self._next_at = 0.0  # event-loop time before which no paced lease starts
        self.is_backlogged = False

    @contextlib.asynccontextmanager
    async def turn(self, stopping: asyncio.Event) -> AsyncIterator[bool]:
        """Wait for this loop's turn to lease (at once while backlogged); yields False if
        the process is stopping meanwhile."""
        if self.is_backlogged:
            yield True
            return
        async with self._turn:
            loop = asyncio.get_running_loop()
            delay = self._next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay)
            self._next_at = loop.time() + self._interval
            yield not stopping.is_set()

    def leased(self, claimed: int) -> None:
        """What the last lease took: a full batch means a backlog."""
        self.is_backlogged = claimed >= self._full
