"""The importer's pure parts: column mapping, time zones, content-derived event ids, and the
fast order check agreeing with the decoder."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.importer.mapping import (
    ColumnMapping,
    MappingError,
    RowReader,
    RowRejected,
    canonical_amount,
    load_mapping_file,
    parse_time,
    parse_zone,
    plain_amount,
    resolve_columns,
)
from shared.events import EventRejected, decode_event
from shared.events.decoding import build_order_event

SHOPIFY = ["Name", "Email", "Financial Status", "Created at", "Total", "Currency"]
WOO = [
    "Order ID",
    "Order Date",
    "Order Status",
    "Customer User ID",
    "Order Total",
    "Order Currency",
]
OURS = ["order_id", "customer_id", "type", "occurred_at", "amount", "currency"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            SHOPIFY,
            {
                "customer": "Email",
                "order": "Name",
                "time": "Created at",
                "amount": "Total",
                "currency": "Currency",
            },
        ),
        (
            WOO,
            {
                "customer": "Customer User ID",
                "order": "Order ID",
                "time": "Order Date",
                "amount": "Order Total",
                "currency": "Order Currency",
            },
        ),
        (
            OURS,
            {
                "customer": "customer_id",
                "order": "order_id",
                "time": "occurred_at",
                "amount": "amount",
                "currency": "currency",
                "type": "type",
            },
        ),
    ],
)
def test_default_columns_fit_common_exports(header: list[str], expected: dict[str, str]) -> None:
    columns = resolve_columns(ColumnMapping("orders"), header, by_index=True)
    assert dict(columns.source) == expected


def test_an_explicit_column_wins_and_matches_loosely() -> None:
    mapping = ColumnMapping("orders", columns={"customer": "customer user id", "time": "Paid at"})
    header = [*WOO, "Paid at"]
    columns = resolve_columns(mapping, header, by_index=True)
    assert columns.source["customer"] == "Customer User ID"
    assert columns.source["time"] == "Paid at"


def test_missing_required_columns_are_named_with_the_header() -> None:
    with pytest.raises(MappingError, match=r"no column for amount, order among: a, customer_id"):
        resolve_columns(ColumnMapping("orders"), ["a", "customer_id", "created_at"], by_index=True)
    with pytest.raises(MappingError, match="mapped to column 'Nope'"):
        resolve_columns(ColumnMapping("orders", columns={"amount": "Nope"}), OURS, by_index=True)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"columns": {"colour": "x"}}, "unknown field"),
        ({"types": {"wc-done": "order_done"}}, "not one of"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
def test_bad_mappings_fail_naming_the_problem(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        ColumnMapping("orders", **load_mapping_file(mapping, "orders"))


def test_a_mapping_file_may_have_a_section_per_kind() -> None:
    content = {"orders": {"columns": {"order": "Number"}}, "interactions": {"timezone": "UTC"}}
    assert load_mapping_file(content, "orders") == {"columns": {"order": "Number"}}
    assert load_mapping_file(content, "interactions") == {"timezone": "UTC"}


BERLIN = parse_zone("Europe/Berlin")


@pytest.mark.parametrize(
    ("cell", "zone", "utc"),
    [
        ("2024-01-05 10:00:00", BERLIN, datetime(2024, 1, 5, 9, tzinfo=UTC)),
        ("2024-07-05T10:00:00", BERLIN, datetime(2024, 7, 5, 8, tzinfo=UTC)),
        ("2024-07-05T10:00:00Z", BERLIN, datetime(2024, 7, 5, 10, tzinfo=UTC)),
        ("2024-07-05 10:00:00 -0400", BERLIN, datetime(2024, 7, 5, 14, tzinfo=UTC)),
        ("2024-07-05T10:00:00+02:00", UTC, datetime(2024, 7, 5, 8, tzinfo=UTC)),
        # Clocks went back at 03:00 CEST: 02:30 happened twice; the first is taken.
        ("2024-10-27 02:30:00", BERLIN, datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
        (datetime(2024, 1, 5, 10), BERLIN, datetime(2024, 1, 5, 9, tzinfo=UTC)),  # noqa: DTZ001
    ],
)
def test_times_naive_in_the_timezone_aware_as_given(cell: Any, zone: Any, utc: datetime) -> None:
    assert parse_time(cell, zone) == utc


@pytest.mark.parametrize("cell", ["", "yesterday", "2024-13-01", 17])
def test_unparseable_times_are_rejected(cell: Any) -> None:
    with pytest.raises(RowRejected):
        parse_time(cell, UTC)


def reader(**columns: str) -> RowReader:
    mapping = ColumnMapping("orders", columns=columns)
    return RowReader.build(mapping, resolve_columns(mapping, OURS, by_index=False))


def row(**cells: Any) -> dict[str, Any]:
    base = {
        "order_id": "1001",
        "customer_id": "c1",
        "type": "",
        "occurred_at": "2024-01-05T10:00:00+00:00",
        "amount": "10.50",
        "currency": "EUR",
    }
    return base | cells


def test_event_ids_come_from_the_content_alone() -> None:
    r = reader()
    one = r.order(row())
    assert one.event_id == r.order(row()).event_id
    # The same amount written otherwise, the same time in another offset: the same event.
    assert r.order(row(amount="10.5")).event_id == one.event_id
    assert r.order(row(occurred_at="2024-01-05T11:00:00+01:00")).event_id == one.event_id
    for changed in (
        row(order_id="1002"),
        row(customer_id="c2"),
        row(type="refund"),
        row(amount="10.51"),
        row(occurred_at="2024-01-05T10:00:01+00:00"),
        row(currency="USD"),
    ):
        assert r.order(changed).event_id != one.event_id
    assert one.event_id.startswith("imp-")
    # Time-ordered prefix: later events sort after earlier ones.
    later = r.order(row(occurred_at="2025-01-05T10:00:00+00:00", order_id="0"))
    assert later.event_id > one.event_id


def test_type_values_and_order_names() -> None:
    r = reader()
    assert r.order(row()).type == "order_placed"
    assert r.order(row(type="Refunded")).type == "order_refunded"
    assert r.order(row(type="canceled")).type == "order_cancelled"
    assert r.order(row(order_id="#1001")).order_id == "1001"  # Shopify's order names
    with pytest.raises(RowRejected, match="type 'shipped' is not known"):
        r.order(row(type="shipped"))
    with pytest.raises(RowRejected) as exc:
        r.order(row(customer_id=" "))
    assert exc.value.reason == "missing_customer"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.50", "10.5"),
        ("1.05E1", "10.5"),
        ("0", "0"),
        ("0.000", "0"),
        ("100", "100"),
        ("00012.10", "12.1"),
        ("abc", "abc"),
    ],
)
def test_canonical_amounts(text: str, canonical: str) -> None:
    assert canonical_amount(text) == canonical
    if canonical != "abc":
        assert canonical == format(Decimal(text).normalize(), "f")


ids = st.text(alphabet="abcXYZ09._:@-#+ é", min_size=0, max_size=6) | st.just("x" * 129)
amounts = st.sampled_from(
    [
        "0",
        "1",
        "10.5",
        "10.50",
        "0.0001",
        "0.00001",
        "999999999999.9999",
        "1000000000000",
        "1000000000001",
        "12.x",
        "-1",
        "+1",
        " 1",
        "1e3",
        "NaN",
        "1.",
        ".5",
        "00012",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["order_placed", "order_refunded", "order_cancelled"]),
    customer=ids,
    order=ids,
    amount=amounts,
    currency=st.sampled_from(["EUR", "eur", "EURO", "XXX", ""]),
    year=st.sampled_from([1999, 2000, 2024]),
)
def test_the_fast_order_check_agrees_with_the_decoder(
    kind: str, customer: str, order: str, amount: str, currency: str, year: int
) -> None:
    """Whatever the fast path accepts, the decoder accepts as the same event; whatever
    the decoder refuses, the fast path refuses (or leaves to the decoder)."""
    at = datetime(year, 6, 1, 12, tzinfo=UTC)
    doc = {
        "type": kind,
        "event_id": "imp-1",
        "customer_id": customer,
        "order_id": order,
        "occurred_at": at.isoformat(),
        "amount": amount,
        "currency": currency,
    }
    try:
        decoded: Any = decode_event(orjson.dumps(doc))
    except EventRejected:
        decoded = None
    number = plain_amount(amount)
    if number is None:
        return  # left to the decoder
    try:
        fast: Any = build_order_event(
            kind,
            event_id="imp-1",
            customer_id=customer,
            order_id=order,
            occurred_at=at,
            amount=number,
            currency=currency,
        )
    except EventRejected:
        fast = None
    assert fast == decoded
    if fast is not None:
        assert fast.amount == Decimal(amount)
