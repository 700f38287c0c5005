"""Input event contracts: every type round-trips, every bad input is refused with its reason."""

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.events import (
    EVENT_CLASSES,
    EVENT_TYPES,
    INTERACTION_EVENT_TYPES,
    ORDER_EVENT_TYPES,
    Event,
    EventRejected,
    InteractionEvent,
    LineItem,
    OrderEvent,
    OrderPlaced,
    PageView,
    RejectReason,
    check_occurred_at,
    decode_event,
    encode_event,
    limits,
)
from shared.events.interactions import INTERACTION_EVENT_CLASSES
from shared.events.orders import ORDER_EVENT_CLASSES

DROP = object()
"""Override value that removes the field from the example."""


def order(**overrides: Any) -> dict[str, Any]:
    """A valid order_placed record as a dict, with fields replaced or dropped."""
    record: dict[str, Any] = {
        "type": "order_placed",
        "schema_version": 1,
        "event_id": "evt-0001",
        "customer_id": "cust-42",
        "order_id": "ord-7",
        "occurred_at": "2024-05-01T12:34:56.789Z",
        "amount": "129.95",
        "currency": "EUR",
        "items": [
            {"sku": "SKU-1", "quantity": 2, "unit_price": "50.00"},
            {"sku": "SKU-2", "quantity": 1, "unit_price": 29.95},
        ],
        "channel": "web",
    }
    return _apply(record, overrides)


def interaction(**overrides: Any) -> dict[str, Any]:
    """A valid page_view record as a dict, with fields replaced or dropped."""
    record: dict[str, Any] = {
        "type": "page_view",
        "event_id": "evt-0002",
        "customer_id": "cust-42",
        "occurred_at": "2024-05-01T12:34:56+02:00",
        "properties": {"path": "/shoes", "position": 3, "score": 0.5, "logged_in": True},
    }
    return _apply(record, overrides)


def _apply(record: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is DROP:
            del record[key]
        else:
            record[key] = value
    return record


def raw(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def item(**overrides: Any) -> dict[str, Any]:
    return _apply({"sku": "SKU-1", "quantity": 1, "unit_price": "1.00"}, overrides)


# -- valid input ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", sorted(ORDER_EVENT_TYPES))
def test_every_order_type_decodes_and_round_trips(event_type: str) -> None:
    event = decode_event(raw(order(type=event_type)))

    assert type(event) is EVENT_CLASSES[event_type]
    assert event.type == event_type
    assert isinstance(event, OrderEvent)
    assert event.amount == Decimal("129.95")
    assert event.items[1] == LineItem(sku="SKU-2", quantity=1, unit_price=Decimal("29.95"))
    assert event.occurred_at == datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("event_type", sorted(INTERACTION_EVENT_TYPES))
def test_every_interaction_type_decodes_and_round_trips(event_type: str) -> None:
    event = decode_event(raw(interaction(type=event_type)))

    assert type(event) is EVENT_CLASSES[event_type]
    assert event.type == event_type
    assert isinstance(event, InteractionEvent)
    assert not isinstance(event, OrderEvent)
    assert event.properties == {"path": "/shoes", "position": 3, "score": 0.5, "logged_in": True}
    assert decode_event(encode_event(event)) == event


def test_event_type_sets_partition_the_decodable_types() -> None:
    assert ORDER_EVENT_TYPES.isdisjoint(INTERACTION_EVENT_TYPES)
    assert ORDER_EVENT_TYPES | INTERACTION_EVENT_TYPES == EVENT_TYPES == set(EVENT_CLASSES)


def test_amount_as_json_number_is_exact() -> None:
    event = decode_event(
        b'{"type":"order_placed","event_id":"e","customer_id":"c",'
        b'"order_id":"o","occurred_at":"2024-01-01T00:00:00Z",'
        b'"amount":0.1,"currency":"USD"}'
    )

    assert isinstance(event, OrderPlaced)
    assert event.amount == Decimal("0.1")


def test_optional_fields_default() -> None:
    event = decode_event(raw(order(schema_version=DROP, items=DROP, channel=DROP)))
    bare = decode_event(raw(interaction(properties=DROP)))

    assert isinstance(event, OrderPlaced)
    assert (event.schema_version, event.items, event.channel) == (1, (), None)
    assert isinstance(bare, PageView)
    assert bare.properties == {}


def test_unknown_top_level_fields_are_ignored() -> None:
    assert decode_event(raw(order(added_in_a_later_release={"x": [1]}))) == decode_event(
        raw(order())
    )


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(order(event_id="a" * limits.ID_MAX_LENGTH), id="id-of-max-length"),
        pytest.param(order(customer_id="user@example.com:x_y.z-1"), id="id-every-punctuation"),
        pytest.param(order(amount="1000000000000"), id="amount-max"),
        pytest.param(order(amount=0), id="amount-zero"),
        pytest.param(order(amount="1.50000"), id="amount-trailing-zeros"),
        pytest.param(order(amount="0.0001"), id="amount-smallest-step"),
        pytest.param(order(items=[item()] * limits.MAX_ITEMS), id="items-max"),
        pytest.param(order(channel="c" * limits.MAX_CHANNEL_LENGTH), id="channel-max"),
        pytest.param(order(channel=None), id="channel-null"),
        pytest.param(order(occurred_at="2000-01-01T00:00:00Z"), id="occurred-at-min"),
        pytest.param(
            interaction(properties={f"k{i}": i for i in range(limits.MAX_PROPERTIES)}),
            id="properties-max-keys",
        ),
        pytest.param(
            interaction(
                properties={
                    "k" * limits.MAX_PROPERTY_KEY_LENGTH: "v" * limits.MAX_PROPERTY_STRING_LENGTH,
                    "big": limits.PROPERTY_INT_MAX,
                    "none": None,
                }
            ),
            id="properties-max-sizes",
        ),
    ],
)
def test_values_on_the_limit_are_accepted(record: dict[str, Any]) -> None:
    assert decode_event(raw(record)).type == record["type"]


# -- invalid input: the exact reason and field ---------------------------------------------

SV = RejectReason.SCHEMA_VIOLATION
_OVERSIZED = raw(order(padding="x" * limits.MAX_RECORD_BYTES))
_DEEP = b'{"type":"login","junk":' + b"[" * 30_000 + b"]" * 30_000 + b"}"

INVALID: list[Any] = [
    # (id, raw record, reason, field)
    ("missing-event-id", raw(order(event_id=DROP)), SV, "$.event_id"),
    ("missing-occurred-at", raw(interaction(occurred_at=DROP)), SV, "$.occurred_at"),
    ("missing-type", raw(order(type=DROP)), SV, "$.type"),
    ("type-not-a-string", raw(order(type=5)), SV, "$.type"),
    ("naive-datetime", raw(order(occurred_at="2024-05-01T12:34:56")), SV, "$.occurred_at"),
    ("not-a-datetime", raw(order(occurred_at="yesterday")), SV, "$.occurred_at"),
    ("before-2000", raw(order(occurred_at="1999-12-31T23:59:59Z")), SV, "$.occurred_at"),
    ("negative-amount", raw(order(amount="-0.01")), SV, "$.amount"),
    ("negative-amount-number", raw(order(amount=-1)), SV, "$.amount"),
    ("amount-nan", raw(order(amount="NaN")), SV, "$.amount"),
    ("amount-infinity", raw(order(amount="Infinity")), SV, "$.amount"),
    ("amount-too-large", raw(order(amount="1000000000000.0001")), SV, "$.amount"),
    ("amount-five-places", raw(order(amount="0.00001")), SV, "$.amount"),
    ("amount-bool", raw(order(amount=True)), SV, "$.amount"),
    ("amount-missing", raw(order(amount=DROP)), SV, "$.amount"),
    ("currency-lowercase", raw(order(currency="eur")), SV, "$.currency"),
    ("currency-four-letters", raw(order(currency="EURO")), SV, "$.currency"),
    ("currency-digit", raw(order(currency="E1R")), SV, "$.currency"),
    ("too-many-items", raw(order(items=[item()] * (limits.MAX_ITEMS + 1))), SV, "$.items"),
    ("item-quantity-zero", raw(order(items=[item(quantity=0)])), SV, "$.items[0].quantity"),
    ("item-missing-sku", raw(order(items=[item(sku=DROP)])), SV, "$.items[0].sku"),
    ("item-bad-sku", raw(order(items=[item(), item(sku="a b")])), SV, "$.items[1].sku"),
    (
        "item-negative-price",
        raw(order(items=[item(), item(unit_price="-1")])),
        SV,
        "$.items[1].unit_price",
    ),
    ("items-not-a-list", raw(order(items={"sku": "a"})), SV, "$.items"),
    ("channel-too-long", raw(order(channel="c" * 33)), SV, "$.channel"),
    ("event-id-too-long", raw(order(event_id="e" * 129)), SV, "$.event_id"),
    ("event-id-empty", raw(interaction(event_id="")), SV, "$.event_id"),
    ("customer-id-whitespace", raw(interaction(customer_id="cust 42")), SV, "$.customer_id"),
    ("order-id-non-ascii", raw(order(order_id="ordé")), SV, "$.order_id"),
    ("order-id-slash", raw(order(order_id="a/b")), SV, "$.order_id"),
    (
        "too-many-properties",
        raw(interaction(properties={f"k{i}": i for i in range(51)})),
        SV,
        "$.properties",
    ),
    ("property-key-too-long", raw(interaction(properties={"k" * 65: 1})), SV, "$.properties"),
    ("property-key-empty", raw(interaction(properties={"": 1})), SV, "$.properties"),
    (
        "property-string-too-long",
        raw(interaction(properties={"k": "v" * 1025})),
        SV,
        "$.properties[...]",
    ),
    ("property-nested", raw(interaction(properties={"k": {"a": 1}})), SV, "$.properties[...]"),
    ("property-int-overflow", raw(interaction(properties={"k": 2**63})), SV, "$.properties[...]"),
    ("top-level-array", b"[1, 2]", SV, "$"),
    ("version-as-string", raw(order(schema_version="1")), SV, "$.schema_version"),
    ("version-as-bool", raw(order(schema_version=True)), SV, "$.schema_version"),
    ("oversized", _OVERSIZED, RejectReason.OVERSIZED, None),
    ("not-json", b"hello", RejectReason.UNDECODABLE, None),
    ("empty", b"", RejectReason.UNDECODABLE, None),
    ("truncated", raw(order())[:-1], RejectReason.UNDECODABLE, None),
    ("trailing-garbage", raw(order()) + b"}", RejectReason.UNDECODABLE, None),
    (
        "invalid-utf8-in-value",
        raw(order()).replace(b"ord-7", b"ord-\xff"),
        RejectReason.UNDECODABLE,
        None,
    ),
    (
        "invalid-utf8-in-unknown-field",
        raw(order())[:-1] + b', "note": "\xc3("}',
        RejectReason.UNDECODABLE,
        None,
    ),
    ("nested-too-deeply", _DEEP, RejectReason.UNDECODABLE, None),
    ("unknown-type", raw(order(type="order_shipped")), RejectReason.UNKNOWN_EVENT_TYPE, "$.type"),
    (
        "unknown-type-with-other-errors",
        raw({"type": "wishlist_add"}),
        RejectReason.UNKNOWN_EVENT_TYPE,
        "$.type",
    ),
    (
        "version-2",
        raw(order(schema_version=2)),
        RejectReason.UNSUPPORTED_SCHEMA_VERSION,
        "$.schema_version",
    ),
    (
        "version-2-with-a-v2-shape",
        raw({"type": "order_placed", "schema_version": 2, "total": {"amount": "1"}}),
        RejectReason.UNSUPPORTED_SCHEMA_VERSION,
        "$.schema_version",
    ),
    (
        "version-0",
        raw(interaction(schema_version=0)),
        RejectReason.UNSUPPORTED_SCHEMA_VERSION,
        "$.schema_version",
    ),
]


@pytest.mark.parametrize(
    ("record", "reason", "field"), [pytest.param(*case[1:], id=case[0]) for case in INVALID]
)
def test_invalid_input_is_rejected_with_reason_and_field(
    record: bytes, reason: RejectReason, field: str | None
) -> None:
    with pytest.raises(EventRejected) as caught:
        decode_event(record)

    assert (caught.value.reason, caught.value.field) == (reason, field)
    assert caught.value.detail
    assert not caught.value.retriable


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            raw(order(occurred_at="2024-05-01T12:34:56")),
            "schema_violation: $.occurred_at: datetime must have a timezone",
        ),
        (raw(order(order_id=DROP)), "schema_violation: $.order_id: required field is missing"),
        (
            raw(order(amount="-1")),
            "schema_violation: $.amount: must be a finite number from 0 to 1000000000000",
        ),
        (raw(order(type="nope")), "unknown_event_type: $.type: unknown event type 'nope'"),
        (
            raw(order(schema_version=2)),
            "unsupported_schema_version: $.schema_version: version 2 is not supported, only 1",
        ),
        (_OVERSIZED, f"oversized: record is {len(_OVERSIZED)} bytes, the limit is 65536"),
    ],
)
def test_error_message_names_the_field_and_why(record: bytes, message: str) -> None:
    with pytest.raises(EventRejected) as caught:
        decode_event(record)

    assert str(caught.value) == message


def test_record_exactly_at_the_size_limit_is_parsed() -> None:
    record = raw(order(padding=""))
    record = raw(order(padding="x" * (limits.MAX_RECORD_BYTES - len(record))))

    assert len(record) == limits.MAX_RECORD_BYTES
    assert decode_event(record).type == "order_placed"


# -- the clock-dependent bound -------------------------------------------------------------

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "occurred_at",
    [limits.MIN_OCCURRED_AT, NOW - timedelta(days=3650), NOW, NOW + limits.MAX_FUTURE_SKEW],
)
def test_plausible_occurred_at_passes(occurred_at: datetime) -> None:
    check_occurred_at(occurred_at, now=NOW)


@pytest.mark.parametrize(
    "occurred_at",
    [
        limits.MIN_OCCURRED_AT - timedelta(microseconds=1),
        NOW + limits.MAX_FUTURE_SKEW + timedelta(microseconds=1),
        datetime(2024, 6, 2, 14, 0, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_implausible_occurred_at_is_out_of_range(occurred_at: datetime) -> None:
    with pytest.raises(EventRejected) as caught:
        check_occurred_at(occurred_at, now=NOW)

    assert caught.value.reason == RejectReason.OCCURRED_AT_OUT_OF_RANGE
    assert caught.value.field == "$.occurred_at"


def test_check_occurred_at_refuses_a_naive_clock() -> None:
    with pytest.raises(ValueError, match="timezone"):
        check_occurred_at(NOW, now=NOW.replace(tzinfo=None))


def test_error_without_field_formats_without_it() -> None:
    assert str(EventRejected(RejectReason.UNDECODABLE, None, "bad")) == "undecodable: bad"


# -- property: any valid event survives encode then decode ---------------------------------

# Any character but U+0000, which PostgreSQL text cannot hold and decoding refuses, and
# lone surrogates, which JSON cannot carry (msgspec refuses a lone \\ud800 escape).
text = partial(
    st.text, alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
)
ids = st.text(alphabet=string.ascii_letters + string.digits + "._:@-", min_size=1, max_size=128)
amounts = st.decimals(
    min_value=0, max_value=limits.MAX_AMOUNT, places=4, allow_nan=False, allow_infinity=False
)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 2),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m))),
)
line_items = st.builds(
    LineItem,
    sku=ids,
    quantity=st.integers(1, limits.MAX_ITEM_QUANTITY),
    unit_price=amounts,
)
property_values = st.one_of(
    text(max_size=limits.MAX_PROPERTY_STRING_LENGTH),
    st.integers(limits.PROPERTY_INT_MIN, limits.PROPERTY_INT_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


def _order_events(cls: type[OrderEvent]) -> st.SearchStrategy[Event]:
    return st.builds(
        cls,
        event_id=ids,
        customer_id=ids,
        order_id=ids,
        occurred_at=timestamps,
        amount=amounts,
        currency=st.text(alphabet=string.ascii_uppercase, min_size=3, max_size=3),
        items=st.lists(line_items, max_size=5).map(tuple),
        channel=st.none() | text(min_size=1, max_size=limits.MAX_CHANNEL_LENGTH),
    )


def _interaction_events(cls: type[InteractionEvent]) -> st.SearchStrategy[Event]:
    return st.builds(
        cls,
        event_id=ids,
        customer_id=ids,
        occurred_at=timestamps,
        properties=st.dictionaries(
            text(min_size=1, max_size=limits.MAX_PROPERTY_KEY_LENGTH),
            property_values,
            max_size=limits.MAX_PROPERTIES,
        ),
    )


def _events() -> st.SearchStrategy[Event]:
    return st.one_of(
        *(_order_events(cls) for cls in ORDER_EVENT_CLASSES),
        *(_interaction_events(cls) for cls in INTERACTION_EVENT_CLASSES),
    )


@given(_events())
def test_any_valid_event_round_trips(event: Event) -> None:
    assert decode_event(encode_event(event)) == event
