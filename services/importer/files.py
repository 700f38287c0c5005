"""Reading the rows of a CSV, JSON Lines or Parquet file, from any row on.

A row's number counts data rows from 0 (what a checkpoint stores); its line is where a
person finds it: the physical line in a CSV (the header is line 1) or JSON Lines file, and
the row number counting from 1 in a Parquet file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson

Format = Literal["csv", "jsonl", "parquet"]
_SUFFIXES: Final[dict[str, Format]] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH_ROWS: Final = 8192


class FileError(ValueError):
    """The file cannot be read as the format it is taken for."""


def detect_format(path: Path, given: str | None = None) -> Format:
    if given and given != "auto":
        if given not in ("csv", "jsonl", "parquet"):
            raise FileError(f"unknown format {given!r}: csv, jsonl or parquet")
        return given  # type: ignore[return-value]
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        if suffix in _SUFFIXES:
            return _SUFFIXES[suffix]
    raise FileError(f"{path}: cannot tell the format from its name; pass --format")


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(slots=True)
class Row:
    number: int  # data rows before it in the file
    line: int
    value: Any  # a list of cells (CSV) or a mapping of column to value


class SourceFile:
    """One file's header and its rows from `start` on; `done_bytes` / `total_bytes` tell
    how far the reading is, for the progress bar."""

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.format = fmt
        self.total_bytes = path.stat().st_size
        self.done_bytes = 0
        self.header: list[str] = []
        self.total_rows: int | None = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                meta = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow raises its own hierarchy
                raise FileError(f"{path}: not a Parquet file ({exc})") from None
            self.header = list(meta.schema_arrow.names)
            self.total_rows = meta.metadata.num_rows
        elif fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                first = next(csv.reader(f), None)
            if first is None:
                raise FileError(f"{path}: empty, no header row")
            self.header = first
        else:
            self.header = self._jsonl_header()

    @property
    def by_index(self) -> bool:
        return self.format == "csv"

    def _jsonl_header(self) -> list[str]:
        keys: dict[str, None] = {}
        with self.path.open("rb") as f:
            for n, line in enumerate(f):
                if n >= 100:
                    break
                if line.strip():
                    try:
                        value = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(value, dict):
                        keys.update(dict.fromkeys(value))
        return list(keys)

    def rows(self, start: int) -> Iterator[Row | tuple[int, int, str]]:
        """Rows from row number `start`; a line that is not a row (bad JSON, a ragged
        CSV row) comes as (number, line, why) instead."""
        if self.format == "csv":
            return self._csv_rows(start)
        if self.format == "jsonl":
            return self._jsonl_rows(start)
        return self._parquet_rows(start)

    def _counted_lines(self, f: IO[bytes]) -> Iterator[str]:
        for raw in f:
            self.done_bytes += len(raw)
            yield raw.decode("utf-8", errors="replace")

    def _csv_rows(self, start: int) -> Iterator[Row | tuple[int, int, str]]:
        width = len(self.header)
        with self.path.open("rb") as f:
            reader = csv.reader(self._counted_lines(f))
            next(reader, None)
            number = 0
            line_before = reader.line_num
            for cells in reader:
                line = line_before + 1
                line_before = reader.line_num
                if not cells:
                    continue  # a blank line is no row
                if number >= start:
                    if len(cells) != width:
                        yield (number, line, f"{len(cells)} cells, the header has {width}")
                    else:
                        yield Row(number, line, cells)
                number += 1

    def _jsonl_rows(self, start: int) -> Iterator[Row | tuple[int, int, str]]:
        number = 0
        with self.path.open("rb") as f:
            for line, raw in enumerate(f, 1):
                self.done_bytes += len(raw)
                if not raw.strip():
                    continue
                if number >= start:
                    try:
                        value = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        yield (number, line, f"not JSON: {exc}")
                        number += 1
                        continue
                    if isinstance(value, dict):
                        yield Row(number, line, value)
                    else:
                        yield (number, line, "not a JSON object")
                number += 1

    def _parquet_rows(self, start: int) -> Iterator[Row | tuple[int, int, str]]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.path)
        total = max(1, self.total_rows or 1)
        number = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            size = batch.num_rows
            if number + size <= start:
                number += size
                continue
            for value in batch.to_pylist():
                if number >= start:
                    yield Row(number, number + 1, value)
                number += 1
            self.done_bytes = self.total_bytes * number // total
