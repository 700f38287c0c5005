"""Bytes to typed events and back: the one entry point the ingest worker calls per record."""

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, TypeAlias, TypeVar

import msgspec

from shared.events import limits
from shared.events.customers import (
    CUSTOMER_EVENT_TYPES,
    CustomerEvent,
    check_customer_event,
)
from shared.events.errors import EventRejected, RejectReason, rejection_from_validation_error
from shared.events.interactions import (
    INTERACTION_EVENT_CLASSES,
    INTERACTION_EVENT_TYPES,
    InteractionEvent,
)
from shared.events.orders import ORDER_EVENT_CLASSES, ORDER_EVENT_TYPES, OrderEvent

Event: TypeAlias = OrderEvent | InteractionEvent
EVENT_CLASSES: Final[Mapping[str, type[Event]]] = {
    cls.type: cls for cls in (*ORDER_EVENT_CLASSES, *INTERACTION_EVENT_CLASSES)
}
EVENT_TYPES: Final = ORDER_EVENT_TYPES | INTERACTION_EVENT_TYPES

_decoder: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)
_customer_decoder: Final[msgspec.json.Decoder[CustomerEvent]] = msgspec.json.Decoder(CustomerEvent)
_encoder: Final = msgspec.json.Encoder()

# One regex over the ids joined by a character they cannot contain costs a fraction of a msgspec
# `pattern` per field. msgspec has already enforced the lengths.
_ID = f"[{limits.ID_CHARSET}]+"
_CURRENCY = limits.CURRENCY_PATTERN.strip("^$")
_ORDER_TEXT: Final = re.compile(rf"{_ID}\n{_ID}\n{_ID}\n{_CURRENCY}")
_INTERACTION_TEXT: Final = re.compile(rf"{_ID}\n{_ID}")
_ONE_ID: Final = re.compile(_ID)
_ZERO: Final = Decimal(0)
T = TypeVar("T")


class _Envelope(msgspec.Struct):
    """Just enough of a record to tell an unknown type or version from other violations."""

    type: Any = None
    schema_version: Any = None


def decode_event(raw: bytes) -> Event:
    """Decode and validate one raw record, or raise `EventRejected` saying why not.

    Deterministic: the result depends on `raw` alone. The clock-dependent bound on
    `occurred_at` is `check_occurred_at`. Unknown top-level fields are ignored.
    """
    event = _decode(raw, _decoder, EVENT_TYPES)
    if isinstance(event, OrderEvent):
        _check_order(event)
    elif _INTERACTION_TEXT.fullmatch(f"{event.event_id}\n{event.customer_id}") is None:
        _raise_first_bad_id({"$.event_id": event.event_id, "$.customer_id": event.customer_id})
    if event.occurred_at < limits.MIN_OCCURRED_AT:
        raise EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            "$.occurred_at",
            f"must not be earlier than {limits.MIN_OCCURRED_AT.isoformat()}",
        )
    return event


def decode_customer_event(raw: bytes) -> CustomerEvent:
    """`decode_event` for the customers topic: decode and validate one profile event
    (shared/events/customers.py), or raise `EventRejected` saying why not. The same rules
    hold (size, UTF-8, U+0000, ids, `occurred_at`); the clock-dependent bound is still
    `check_occurred_at`'s."""
    event = _decode(raw, _customer_decoder, CUSTOMER_EVENT_TYPES)
    if _INTERACTION_TEXT.fullmatch(f"{event.event_id}\n{event.customer_id}") is None:
        _raise_first_bad_id({"$.event_id": event.event_id, "$.customer_id": event.customer_id})
    if event.occurred_at < limits.MIN_OCCURRED_AT:
        raise EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            "$.occurred_at",
            f"must not be earlier than {limits.MIN_OCCURRED_AT.isoformat()}",
        )
    check_customer_event(event)
    return event


def _decode(raw: bytes, decoder: msgspec.json.Decoder[T], known_types: frozenset[str]) -> T:
    """The checks every record passes before its family's own: size, UTF-8, the schema,
    and no U+0000."""
    if len(raw) > limits.MAX_RECORD_BYTES:
        raise EventRejected(
            RejectReason.OVERSIZED,
            None,
            f"record is {len(raw)} bytes, the limit is {limits.MAX_RECORD_BYTES}",
        )
    # msgspec checks UTF-8 only in the strings it keeps, not in fields it skips.
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise EventRejected(
                RejectReason.UNDECODABLE, None, f"not UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
    try:
        event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _classify(raw, exc, known_types) from None
    except msgspec.DecodeError as exc:
        raise EventRejected(RejectReason.UNDECODABLE, None, str(exc)) from None
    except RecursionError:
        raise EventRejected(RejectReason.UNDECODABLE, None, "JSON nested too deeply") from None
    # JSON can spell U+0000 only as an escape; PostgreSQL's text cannot hold it, and a
    # record that reached the database with one would fail its whole batch there.
    if b"\\u0000" in raw:
        path = _nul_path(msgspec.to_builtins(event), "$")
        if path is not None:
            raise EventRejected(
                RejectReason.SCHEMA_VIOLATION, path, "must not contain the NUL character U+0000"
            )
    return event


def _nul_path(value: Any, path: str) -> str | None:
    """The JSON path of the first string (key or value) holding U+0000, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return f"{path}.{key!r}"
            found = _nul_path(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def encode_event(event: Event) -> bytes:
    """Encode an event as compact JSON, amounts as strings. Does not validate."""
    return _encoder.encode(event)


def check_occurred_at(occurred_at: datetime, *, now: datetime) -> None:
    """Raise `EventRejected(occurred_at_out_of_range)` unless `occurred_at` is plausible.

    Plausible means from `MIN_OCCURRED_AT` up to `now + MAX_FUTURE_SKEW`. Kept out of
    `decode_event` so that decoding stays deterministic; the worker passes its own clock.
    """
    if now.tzinfo is None:
        raise ValueError("now must carry a timezone")
    latest = now + limits.MAX_FUTURE_SKEW
    if limits.MIN_OCCURRED_AT <= occurred_at <= latest:
        return
    raise EventRejected(
        RejectReason.OCCURRED_AT_OUT_OF_RANGE,
        "$.occurred_at",
        f"{occurred_at.isoformat()} is outside "
        f"[{limits.MIN_OCCURRED_AT.isoformat()}, {latest.isoformat()}]",
    )


_ORDER_CLASSES: Final[Mapping[str, type[OrderEvent]]] = {c.type: c for c in ORDER_EVENT_CLASSES}


def build_order_event(
    type_: str,
    *,
    event_id: str,
    customer_id: str,
    order_id: str,
    occurred_at: datetime,
    amount: Decimal,
    currency: str,
    channel: str | None = None,
) -> OrderEvent:
    """An order event from fields already typed (a file's row), checked by the rules
    `decode_event` applies to the same fields in JSON: ids (length and characters), the
    currency, the amount and the earliest time. Raises `EventRejected`; the reason of a
    rejected row may be worded differently from the decoder's, so a caller that reports
    reasons decodes the row's JSON for them (services/importer)."""
    cls = _ORDER_CLASSES.get(type_)
    if cls is None:
        raise EventRejected(
            RejectReason.UNKNOWN_EVENT_TYPE, "$.type", f"unknown event type {type_!r}"
        )
    for field, value in (
        ("$.event_id", event_id),
        ("$.customer_id", customer_id),
        ("$.order_id", order_id),
    ):
        if not 1 <= len(value) <= limits.ID_MAX_LENGTH:
            raise EventRejected(
                RejectReason.SCHEMA_VIOLATION, field, f"length must be 1 to {limits.ID_MAX_LENGTH}"
            )
    if occurred_at.tzinfo is None:
        raise EventRejected(RejectReason.SCHEMA_VIOLATION, "$.occurred_at", "needs a timezone")
    if type(amount) is not Decimal:
        raise EventRejected(RejectReason.SCHEMA_VIOLATION, "$.amount", "must be a decimal")
    if channel is not None and not 1 <= len(channel) <= limits.MAX_CHANNEL_LENGTH:
        raise EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            "$.channel",
            f"length must be 1 to {limits.MAX_CHANNEL_LENGTH}",
        )
    event = cls(
        event_id=event_id,
        customer_id=customer_id,
        order_id=order_id,
        occurred_at=occurred_at,
        amount=amount,
        currency=currency,
        channel=channel,
    )
    _check_order(event)
    if occurred_at < limits.MIN_OCCURRED_AT:
        raise EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            "$.occurred_at",
            f"must not be earlier than {limits.MIN_OCCURRED_AT.isoformat()}",
        )
    return event


def _check_order(event: OrderEvent) -> None:
    text = f"{event.event_id}\n{event.customer_id}\n{event.order_id}\n{event.currency}"
    if _ORDER_TEXT.fullmatch(text) is None:
        _raise_first_bad_id(
            {
                "$.event_id": event.event_id,
                "$.customer_id": event.customer_id,
                "$.order_id": event.order_id,
            },
        )
        raise EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            "$.currency",
            f"must match {limits.CURRENCY_PATTERN}",
        )
    _check_amount(event.amount, "$.amount")
    for index, item in enumerate(event.items):
        if _ONE_ID.fullmatch(item.sku) is None:
            _raise_first_bad_id({f"$.items[{index}].sku": item.sku})
        _check_amount(item.unit_price, f"$.items[{index}].unit_price")


def _check_amount(amount: Decimal, field: str) -> None:
    # is_finite first: ordering comparisons on NaN raise instead of returning False.
    if amount.is_finite() and _ZERO <= amount <= limits.MAX_AMOUNT:
        if amount.quantize(limits.AMOUNT_QUANTUM) == amount:
            return
        detail = f"must have at most {limits.AMOUNT_DECIMAL_PLACES} decimal places"
    else:
        detail = f"must be a finite number from 0 to {limits.MAX_AMOUNT:f}"
    raise EventRejected(RejectReason.SCHEMA_VIOLATION, field, detail)


def _raise_first_bad_id(ids: dict[str, str]) -> None:
    for field, value in ids.items():
        if _ONE_ID.fullmatch(value) is None:
            raise EventRejected(
                RejectReason.SCHEMA_VIOLATION, field, f"must match {limits.ID_PATTERN}"
            )


def _classify(
    raw: bytes, exc: msgspec.ValidationError, known_types: frozenset[str]
) -> EventRejected:
    """Tell an unsupported version or unknown type apart from other schema violations."""
    try:
        envelope = msgspec.json.decode(raw, type=_Envelope)
    except (msgspec.DecodeError, RecursionError):
        return rejection_from_validation_error(exc)
    version = envelope.schema_version
    # `type(...) is int` because True == 1; a non-integer version is a plain type error.
    if type(version) is int and version != limits.SCHEMA_VERSION:
        return EventRejected(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            "$.schema_version",
            f"version {version} is not supported, only {limits.SCHEMA_VERSION}",
        )
    if isinstance(envelope.type, str) and envelope.type not in known_types:
        # An event of another family is known, but not on this topic.
        elsewhere = (
            "customers" if envelope.type in CUSTOMER_EVENT_TYPES else "orders or interactions"
        )
        detail = (
            f"{envelope.type!r} belongs on the {elsewhere} topic"
            if envelope.type in EVENT_TYPES | CUSTOMER_EVENT_TYPES
            else f"unknown event type {envelope.type!r}"
        )
        return EventRejected(RejectReason.UNKNOWN_EVENT_TYPE, "$.type", detail)
    return rejection_from_validation_error(exc)
