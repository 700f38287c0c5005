"""Member exports, pure: the CSV is what the csv module writes (RFC 4180) for any reason,
NDJSON one object per line, and the format comes from `format=` or Accept."""

from __future__ import annotations

import csv
import io

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api.errors import ApiError
from services.api.exports.service import FORMATS, choose_format, encode_chunk

SINCE = "2026-02-01T09:30:00.000000Z"
ids = st.from_regex(r"[A-Za-z0-9._:@\-]{1,20}", fullmatch=True)
reasons = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


@given(st.lists(st.tuples(ids, reasons), max_size=20), st.booleans())
def test_csv_is_what_the_csv_module_writes(rows: list[tuple[str, str]], header: bool) -> None:
    records = [(c, SINCE, r) for c, r in rows]
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(["customer_id", "since", "reason"])
    writer.writerows(records)
    encoded = encode_chunk(FORMATS["csv"], records, header=header)
    assert encoded == out.getvalue().encode()
    parsed = list(csv.reader(io.StringIO(encoded.decode(), newline="")))
    assert parsed[1 if header else 0 :] == [list(r) for r in records]


@given(st.lists(st.tuples(ids, reasons), max_size=20))
def test_ndjson_is_one_object_per_line(rows: list[tuple[str, str]]) -> None:
    records = [(c, SINCE, r) for c, r in rows]
    encoded = encode_chunk(FORMATS["ndjson"], records, header=True)
    assert encoded.count(b"\n") == len(records)
    back = [orjson.loads(line) for line in encoded.splitlines()]
    assert back == [{"customer_id": c, "since": s, "reason": r} for c, s, r in records]


@pytest.mark.parametrize(
    ("requested", "accept", "chosen"),
    [
        (None, None, "csv"),
        (None, "", "csv"),
        (None, "*/*", "csv"),
        (None, "text/html, */*;q=0.1", "csv"),
        (None, "application/x-ndjson", "ndjson"),
        (None, "APPLICATION/NDJSON", "ndjson"),
        (None, "text/csv;q=0.2, application/jsonl", "ndjson"),
        (None, "application/jsonl;q=0.2, text/csv", "csv"),
        (None, "text/csv, application/x-ndjson", "csv"),
        (None, "text/csv;q=0, application/*;q=0.1", "ndjson"),
        (None, "text/csv;q=bad, application/x-ndjson;q=0.1", "ndjson"),
        ("ndjson", "text/csv", "ndjson"),
        ("csv", "application/xml", "csv"),
    ],
)
def test_the_format_chosen(requested: str | None, accept: str | None, chosen: str) -> None:
    assert choose_format(requested, accept).name == chosen  # type: ignore[arg-type]


@pytest.mark.parametrize("accept", ["application/xml", "text/csv;q=0", "image/*"])
def test_nothing_acceptable_is_406(accept: str) -> None:
    with pytest.raises(ApiError) as refused:
        choose_format(None, accept)
    assert refused.value.status == 406
