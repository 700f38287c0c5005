"""The historical import: files of rows in, the same orders, aggregates and read-model
changes as streaming those events through ingest would give, then one evaluation per
imported customer with cause `import`.

Each row is checked by the event contract's own checks and ingest's screen; each chunk goes
through ingest's dedup ledger and is merged with ingest's own statements (the order merge,
the aggregates, the interaction rows and `fact_changes`): an order chunk staged by COPY and
folded by the database as `build_changes` folds a batch (`_commit_orders`), an interaction
chunk folded by `build_changes` itself (`_commit_events`). The guarantee is in `_commit`:
a chunk's rows, the
file's checkpoint after them and the length of the reject file commit in ONE transaction,
so after a kill -9 a run resumes at the first row not committed, and the reject file is cut
back to what the committed chunks wrote.

While one chunk commits, the next is read and folded (`_prepare_loop`), which keeps both
the importer and its PostgreSQL backend busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.importer import repository as repo
from services.importer.files import Format, Row, SourceFile, content_hash
from services.importer.mapping import (
    ColumnMapping,
    RowReader,
    RowRejected,
    plain_amount,
    resolve_columns,
)
from services.importer.progress import Progress
from services.ingest import repository as ingest
from services.ingest.batch import Changes, build_changes, to_base
from shared.clock import Clock
from shared.db.engine import pg_connection
from shared.db.literals import text_array
from shared.events import EventRejected
from shared.events.decoding import build_order_event
from shared.events.screening import Screen

log = structlog.get_logger("importer")

YIELD_EVERY_ROWS = 256  # as ingest's prepare stage: the commit's statements go out meanwhile
AT_OR_AFTER_UNTIL = "at_or_after_until"


@dataclass(frozen=True, slots=True)
class ImportFile:
    path: Path
    format: Format
    mapping: ColumnMapping


@dataclass(slots=True)
class Chunk:
    """Rows [start, end) of one file, read and folded, ready to commit."""

    start: int
    end: int
    is_last: bool
    read: int = 0
    events: dict[str, Any] = field(default_factory=dict)  # interactions
    # Orders: the staged row of each event id (services/importer/repository.py).
    orders: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    duplicates: int = 0  # within the chunk
    rejects: list[bytes] = field(default_factory=list)
    changes: Changes | None = None


@dataclass(slots=True)
class Outcome:
    """What a run did, over all its invocations (from the database) and this one."""

    run_id: str
    rows_read: int
    imported: int
    duplicates: int
    rejected: int
    customers: int
    elapsed_seconds: float
    rows_this_time: int
    imported_this_time: int
    segmented: bool
    reject_path: str


def run_key(files: Sequence[tuple[str, ImportFile]], publish: str, until: datetime) -> str:
    """One id per set of files (by content and how they are read) and options: running
    the same command again resumes the same run."""
    digest = hashlib.sha256()
    for key, _ in sorted(files, key=lambda f: f[0]):
        digest.update(key.encode())
    digest.update(f"{publish}|{until.isoformat()}".encode())
    return digest.hexdigest()[:24]


def file_key(path: Path, fmt: str, mapping: ColumnMapping, until: datetime) -> str:
    """A file's checkpoint key: its content and everything that changes how it is read."""
    digest = hashlib.sha256()
    digest.update(content_hash(path).encode())
    digest.update(f"|{fmt}|{mapping.fingerprint()}|{until.isoformat()}".encode())
    return digest.hexdigest()


class Importer:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        rates: dict[str, Decimal],
        retention: timedelta,
        chunk_rows: int,
        progress: Progress,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._rates = rates
        self._retention = retention
        self._chunk_rows = chunk_rows
        self._progress = progress
        self._screen = Screen(rates)
        self._expect_new = True
        self._stopping = asyncio.Event()

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def clock(self) -> Clock:
        return self._clock

    def stop(self) -> None:
        """Stop after the chunk in flight commits; running the command again resumes."""
        self._stopping.set()

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    async def load(
        self,
        run: repo.Run,
        files: Sequence[tuple[str, ImportFile]],
        reject_path: Path,
    ) -> tuple[int, int]:
        """Import every file's rows not yet committed; returns (rows read, imported) by this
        invocation. The reject file is cut back to what the run's committed chunks wrote."""
        rejects = _open_rejects(reject_path, run.reject_bytes)
        read = imported = 0
        try:
            for key, spec in files:
                if self.is_stopping:
                    break
                r, i = await self._load_file(run, key, spec, rejects)
                read, imported = read + r, imported + i
        finally:
            rejects.close()
        return read, imported

    async def _load_file(
        self, run: repo.Run, key: str, spec: ImportFile, rejects: IO[bytes]
    ) -> tuple[int, int]:
        async with pg_connection(self._engine) as conn:
            progress = await repo.file_progress(
                conn, key, run.run_id, str(spec.path), spec.mapping.kind
            )
        self._progress.add_done(progress.rows_read, progress.rejected)
        if progress.is_done:
            log.info("import_file_already_done", path=str(spec.path), rows=progress.rows_read)
            return 0, 0
        source = SourceFile(spec.path, spec.format)
        columns = resolve_columns(spec.mapping, source.header, by_index=source.by_index)
        reader = RowReader.build(spec.mapping, columns)
        log.info(
            "import_file",
            path=str(spec.path),
            format=spec.format,
            kind=spec.mapping.kind,
            columns=dict(columns.source),
            resume_at_row=progress.next_row,
        )
        self._progress.start_file(source)
        chunks: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=1)
        preparing = asyncio.create_task(
            self._prepare_loop(source, reader, progress.next_row, run.until, chunks)
        )
        read = imported = 0
        try:
            async with pg_connection(self._engine) as conn:
                while (chunk := await chunks.get()) is not None:
                    fresh = await self._commit(conn, run.run_id, key, chunk, rejects)
                    read, imported = read + chunk.read, imported + fresh
                    self._progress.committed(fresh, chunk.duplicates + len(chunk.events) - fresh)
                    if chunk.is_last or self.is_stopping:
                        break
        finally:
            preparing.cancel()
            await asyncio.gather(preparing, return_exceptions=True)
        return read, imported

    async def _prepare_loop(
        self,
        source: SourceFile,
        reader: RowReader,
        start: int,
        until: datetime,
        out: asyncio.Queue[Chunk | None],
    ) -> None:
        rows = source.rows(start)
        chunk = Chunk(start, start, is_last=False)
        name = str(source.path)
        for n, item in enumerate(rows, 1):
            if n % YIELD_EVERY_ROWS == 0:
                await asyncio.sleep(0)
            if isinstance(item, Row):
                number, line = item.number, item.line
                self._take(chunk, item, reader, until, name, source.header)
            else:
                number, line, why = item
                chunk.rejects.append(_reject_line(name, line, "unreadable_row", why, None))
            chunk.read += 1
            chunk.end = number + 1
            self._progress.read(1, 0)
            if chunk.read >= self._chunk_rows:
                await out.put(self._folded(chunk))
                chunk = Chunk(chunk.end, chunk.end, is_last=False)
        chunk.is_last = True
        await out.put(self._folded(chunk))
        await out.put(None)

    def _take(
        self,
        chunk: Chunk,
        row: Row,
        reader: RowReader,
        until: datetime,
        name: str,
        header: Sequence[str],
    ) -> None:
        try:
            event = self._event(row, reader, until)
        except RowRejected as exc:
            chunk.rejects.append(
                _reject_line(name, row.line, exc.reason, str(exc), row.value, header)
            )
            self._progress.read(0, 1)
            return
        except EventRejected as exc:
            detail = exc.detail if exc.field is None else f"{exc.field}: {exc.detail}"
            chunk.rejects.append(
                _reject_line(name, row.line, str(exc.reason), detail, row.value, header)
            )
            self._progress.read(0, 1)
            return
        if event.event_id in chunk.events or event.event_id in chunk.orders:
            chunk.duplicates += 1
        elif reader.mapping.kind == "orders":
            chunk.orders[event.event_id] = (
                event.event_id,
                event.customer_id,
                event.order_id,
                event.type,
                event.occurred_at,
                to_base(event.amount, self._rates[event.currency]),
                event.currency,
                event.channel,
            )
        else:
            chunk.events[event.event_id] = event

    def _event(self, row: Row, reader: RowReader, until: datetime) -> Any:
        """The row's event, validated as ingest validates a record (its `Screen`): an
        order row whose amount is written plainly is built and checked from its fields
        (`build_order_event`, the decoder's own checks), anything else is decoded from
        JSON by `decode_event`, which also words every rejection."""
        if reader.mapping.kind == "interactions":
            raw, at = reader.interaction_json(row.value)
            _before_until(at, until)
            return self._screen(raw, self._clock.now())
        fields = reader.order(row.value)
        _before_until(fields.occurred_at, until)
        amount = plain_amount(fields.amount)
        if amount is not None and fields.currency in self._rates:
            # Ingest's screen would also check the time against its clock: --until is
            # not after now (checked at start), so a row before it passes.
            try:
                event = build_order_event(
                    fields.type,
                    event_id=fields.event_id,
                    customer_id=fields.customer_id,
                    order_id=fields.order_id,
                    occurred_at=fields.occurred_at,
                    amount=amount,
                    currency=fields.currency,
                    channel=fields.channel,
                )
                return event
            except EventRejected:
                pass  # the decoder says why, in its own words
        return self._screen(fields.json(), self._clock.now())

    def _folded(self, chunk: Chunk) -> Chunk:
        if not chunk.events:
            return chunk  # orders are folded by the database (`_commit_orders`)
        chunk.changes = build_changes(
            list(chunk.events.values()),
            self._rates,
            self._clock.now() - self._retention,
            with_statements=False,
        )
        return chunk

    async def _commit(
        self, conn: Any, run_id: str, key: str, chunk: Chunk, rejects: IO[bytes]
    ) -> int:
        """One chunk, one transaction; returns how many of its events were new.

        1. The chunk's reject lines are appended to the reject file and flushed to disk
           first; the run's reject length committed below counts them.
        2. Then ONE transaction: the dedup ledger (content-derived ids, so a row seen in any
           file before is a duplicate), the orders, aggregates, interaction rows and
           fact_changes with ingest's statements, the imported customers, and last the
           file's checkpoint (fenced: it must still be at the chunk's start).

        A kill -9 before the commit leaves none of it: the next run starts at the chunk's
        first row and cuts the reject file back to the committed length. The transaction
        need not wait for its WAL flush for the same reason as ingest's batches: a commit a
        PostgreSQL crash takes back takes its checkpoint with it, and the rows come back
        when the run resumes; the run queues its customers, synchronously, only after the
        last chunk.
        """
        if chunk.rejects:
            rejects.write(b"".join(chunk.rejects))
            rejects.flush()
            os.fsync(rejects.fileno())
        now = self._clock.now()
        async with conn.transaction():
            await ingest.skip_flush_wait(conn)
            if chunk.orders:
                fresh_count = await self._commit_orders(conn, run_id, chunk, now)
            else:
                fresh_count = await self._commit_events(conn, run_id, chunk, now)
            counts = (
                chunk.read,
                fresh_count,
                chunk.duplicates + len(chunk.events) + len(chunk.orders) - fresh_count,
                len(chunk.rejects),
            )
            await repo.advance_file(
                conn,
                key,
                run_id,
                chunk.start,
                chunk.end,
                counts,
                rejects.tell(),
                is_last=chunk.is_last,
            )
        return fresh_count

    async def _commit_orders(self, conn: Any, run_id: str, chunk: Chunk, now: datetime) -> int:
        """An order chunk: its events staged by COPY (sorted by id, so that concurrent
        writers lock ledger rows in one order), the ones seen before dropped by the dedup
        ledger, the rest folded and merged by the database with ingest's statements."""
        await repo.stage_order_events(conn, [chunk.orders[k] for k in sorted(chunk.orders)])
        new = await repo.keep_new_staged_events(conn, now, expect_new=self._expect_new)
        self._expect_new = new is None
        fresh = len(chunk.orders) if new is None else new
        if fresh:
            await repo.fold_staged_orders(conn, run_id)
            await ingest.apply_staged_tables(conn, has_touches_without_orders=False)
        return fresh

    async def _commit_events(self, conn: Any, run_id: str, chunk: Chunk, now: datetime) -> int:
        """An interaction chunk: folded here by ingest's `build_changes`, merged with
        ingest's statements."""
        ids = sorted(chunk.events)
        fresh: set[str] = set()
        if ids:
            fresh = await ingest.keep_new_events(
                conn, ids, now, expect_new=self._expect_new, arg=text_array(ids)
            )
            self._expect_new = len(fresh) == len(ids)
        changes = chunk.changes
        if changes is None or len(fresh) != len(ids):
            changes = build_changes(
                [chunk.events[i] for i in ids if i in fresh],
                self._rates,
                now - self._retention,
                with_statements=False,
            )
        if fresh:
            await ingest.insert_interactions(conn, changes.window_rows, changes.pending)
            await ingest.apply_staged(
                conn, changes.touches, changes.order_customers, changes.orders
            )
            await repo.record_customers(conn, run_id, [t.customer_id for t in changes.touches])
        return len(fresh)


def _before_until(at: datetime, until: datetime) -> None:
    if at >= until:
        raise RowRejected(
            AT_OR_AFTER_UNTIL, f"{at.isoformat()} is not before --until {until.isoformat()}"
        )


def _open_rejects(path: Path, committed: int) -> IO[bytes]:
    """The reject file, cut back to the `committed` bytes the run's chunks wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("r+b" if path.exists() else "w+b")
    size = f.seek(0, os.SEEK_END)
    if size < committed:
        f.close()
        raise RejectFileError(
            f"{path} has {size} bytes but the run committed {committed}: it was moved or cut;"
            " restore it, or pass another --rejects path to start the run's rejects anew"
        )
    f.truncate(committed)
    f.seek(committed)
    return f


class RejectFileError(RuntimeError):
    pass


def _jsonable(value: Any, header: Sequence[str]) -> Any:
    if isinstance(value, list):
        return dict(zip(header, value, strict=False))
    return value


def _reject_line(
    name: str,
    line: int,
    reason: str,
    detail: str,
    row: Any,
    header: Sequence[str] = (),
) -> bytes:
    """One JSON line: where the row is, why it was refused, and the row as read."""
    record = {"file": name, "line": line, "reason": reason, "detail": detail}
    if row is not None:
        record["row"] = _jsonable(row, header)
    return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
