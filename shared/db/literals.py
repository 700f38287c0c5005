"""PostgreSQL array literals, built in Python and sent as one text parameter each.

asyncpg binds a Python list element by element, checking each element against abstract
base classes; for the tens of thousands of ids and counts in one batch's statements that
costs the client more than PostgreSQL spends parsing a `{...}` literal. The literals are
built in the worker's prepare stage, while the previous batch commits, so the commit stage
only ships them (`unnest($1::text::bigint[])` in SQL).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal


def text_array(values: Iterable[str | None]) -> str:
    """`{"a","b",NULL}`: every element quoted, so commas, braces and the word NULL are data."""
    return "{" + ",".join(_quoted(v) for v in values) + "}"


def int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def decimal_array(values: Iterable[Decimal | None]) -> str:
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def timestamp_array(values: Iterable[datetime | None]) -> str:
    """Aware datetimes as ISO 8601 text, which `::timestamptz[]` reads back exactly."""
    return text_array(None if v is None else v.isoformat() for v in values)


def _quoted(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'
