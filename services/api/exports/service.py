"""A segment's members as CSV or NDJSON, read and sent chunk by chunk.

The rows are read by keyset pagination (`customer_id > last`, over the members index), one
short statement per chunk of `chunk_rows`, with the next chunk read while the current one
is sent: at most two chunks are held, whatever the segment's size, and no connection or
transaction is held while a slow client reads. The price: the export is not one snapshot.
Each member appears at most once, in customer_id order; a customer who enters or leaves
the segment while the export runs may or may not be in it, each row as of its chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import asyncpg
import orjson

from services.api.database import Database
from services.api.errors import ApiError
from services.api.exports import repository

Format = Literal["csv", "ndjson"]
COLUMNS: Final = ("customer_id", "since", "reason")


@dataclass(frozen=True, slots=True)
class ExportFormat:
    name: Format
    media_type: str
    extension: str


FORMATS: Final[dict[Format, ExportFormat]] = {
    "csv": ExportFormat("csv", "text/csv; charset=utf-8", "csv"),
    "ndjson": ExportFormat("ndjson", "application/x-ndjson", "ndjson"),
}
# Media types a client may ask for in Accept, and the format each stands for.
_ACCEPTED: Final[dict[str, Format]] = {
    "text/csv": "csv",
    "text/*": "csv",
    "*/*": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/*": "ndjson",
}


def choose_format(requested: Format | None, accept: str | None) -> ExportFormat:
    """`format=` if given, else the most preferred type of `Accept` that is CSV or NDJSON
    (CSV when Accept is absent or `*/*`); 406 if Accept admits neither."""
    if requested is not None:
        return FORMATS[requested]
    if not accept:
        return FORMATS["csv"]
    ranked: list[tuple[float, int, Format]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        found = _ACCEPTED.get(media.lower())
        if found is not None and quality > 0:
            ranked.append((-quality, position, found))
    if not ranked:
        raise ApiError(
            406,
            "not_acceptable",
            "an export is text/csv or application/x-ndjson: ask for one in Accept, or "
            "pass format=csv or format=ndjson",
        )
    return FORMATS[min(ranked)[2]]


def encode_chunk(kind: ExportFormat, rows: Sequence[asyncpg.Record], *, header: bool) -> bytes:
    if kind.name == "ndjson":
        lines = [orjson.dumps({"customer_id": c, "since": s, "reason": r}) for c, s, r in rows]
        return b"".join(line + b"\n" for line in lines)
    # RFC 4180, as the csv module writes it (a field quoted when it holds a comma, a quote
    # or a line end; CRLF line ends), at a tenth of its cost per row: only `reason` can
    # need quotes, since neither an id of the contract nor the ISO time holds any of them.
    text = "".join(f"{c},{s},{_csv_field(r)}\r\n" for c, s, r in rows)
    return (_CSV_HEADER + text).encode() if header else text.encode()


_CSV_HEADER: Final = ",".join(COLUMNS) + "\r\n"
_NEEDS_QUOTES: Final = re.compile(r'[",\r\n]')


def _csv_field(value: str) -> str:
    if _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.replace('"', '""') + '"'


class MemberChunks:
    """The members of one segment, chunk by chunk; `close()` stops the read ahead."""

    def __init__(self, db: Database, dimension: str, segment: str, chunk_rows: int) -> None:
        self._db = db
        self._dimension = dimension
        self._segment = segment
        self._chunk_rows = chunk_rows
        self._ahead: asyncio.Task[list[asyncpg.Record]] | None = None

    async def _read(self, after: str) -> list[asyncpg.Record]:
        async with self._db.read() as conn:
            return await repository.member_chunk(
                conn, self._dimension, self._segment, after, self._chunk_rows
            )

    async def chunks(self) -> AsyncGenerator[list[asyncpg.Record]]:
        """Every member once, in customer_id order; raises ApiError 503 when PostgreSQL does
        not answer a chunk's read in time."""
        rows = await self._read("")
        while True:
            if len(rows) < self._chunk_rows:
                if rows:
                    yield rows
                return
            # Read the next chunk while this one is being sent.
            self._ahead = asyncio.create_task(self._read(rows[-1]["customer_id"]))
            yield rows
            ahead, self._ahead = self._ahead, None
            rows = await ahead

    async def close(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, ApiError):
                await ahead
