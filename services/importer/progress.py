"""The progress bar on stderr while an import runs, and its summary at the end."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

from services.importer.files import SourceFile

BAR_WIDTH = 24


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts kept by the importer; `render_loop` draws them every interval. On a terminal
    the bar redraws one line; otherwise (a log file, CI) it prints a line per interval."""

    def __init__(self, stream: IO[str] | None = None, *, interval_seconds: float = 0.5) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval_seconds
        self._is_tty = self._stream.isatty()
        self.started = time.monotonic()
        self.rows = 0  # read by this invocation
        self.rejected = 0
        self.imported = 0
        self.duplicates = 0
        self.before_rows = 0  # read by earlier invocations of the run
        self.before_rejected = 0
        self.pending_customers: int | None = None
        self._file: SourceFile | None = None
        self._file_bytes_at_start = 0
        self._file_started = time.monotonic()

    def add_done(self, rows: int, rejected: int) -> None:
        self.before_rows += rows
        self.before_rejected += rejected

    def start_file(self, source: SourceFile) -> None:
        self._file = source
        self._file_bytes_at_start = source.done_bytes
        self._file_started = time.monotonic()

    def read(self, rows: int, rejected: int) -> None:
        self.rows += rows
        self.rejected += rejected

    def committed(self, imported: int, duplicates: int) -> None:
        self.imported += imported
        self.duplicates += duplicates

    def segmenting(self, pending: int) -> None:
        self.pending_customers = pending

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.rows / elapsed
        rejected = self.before_rejected + self.rejected
        if self.pending_customers is not None:
            return (
                f"segmenting: {_count(self.pending_customers)} imported customers still queued"
                f" | rows {_count(self.before_rows + self.rows)} | rejected {_count(rejected)}"
            )
        fraction, eta = 0.0, "?"
        source = self._file
        if source is not None and source.total_bytes:
            fraction = min(1.0, source.done_bytes / source.total_bytes)
            spent = time.monotonic() - self._file_started
            done = source.done_bytes - self._file_bytes_at_start
            if done > 0:
                eta = _duration(spent * (source.total_bytes - source.done_bytes) / done)
        filled = round(fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        name = source.path.name if source is not None else ""
        return (
            f"{name} [{bar}] {fraction:4.0%} | rows {_count(self.before_rows + self.rows)}"
            f" | {_count(rate)} rows/s | ETA {eta} | rejected {_count(rejected)}"
        )

    def draw(self, *, final: bool = False) -> None:
        text = self.line()
        if self._is_tty:
            self._stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    async def render_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.draw()
        except asyncio.CancelledError:
            self.draw(final=True)
            raise

    def summary(self, outcome: Any) -> str:
        rate = outcome.imported_this_time / max(1e-9, outcome.elapsed_seconds)
        lines = [
            f"import {outcome.run_id}: {'complete' if outcome.segmented else 'rows in'}",
            f"  rows read    {_count(outcome.rows_read)}",
            f"  imported     {_count(outcome.imported)}",
            f"  duplicates   {_count(outcome.duplicates)}",
            f"  rejected     {_count(outcome.rejected)}"
            + (f"  (see {outcome.reject_path})" if outcome.rejected else ""),
            f"  customers    {_count(outcome.customers)}",
            f"  elapsed      {outcome.elapsed_seconds:.1f} s"
            f" ({_count(outcome.rows_this_time)} rows read by this invocation)",
            f"  events/s     {_count(rate)}",
        ]
        return "\n".join(lines)
