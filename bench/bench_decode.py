"""Decode cost per event: `.venv/bin/python -m bench.bench_decode`.

Compares `decode_event` (msgspec plus the checks msgspec cannot express), msgspec's typed
decode alone, pydantic v2 `model_validate_json` with the same constraints, and `json.loads`
followed by hand-written checks. Prints the best of several runs, in µs per event.
"""

import json
import re
import timeit
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
import pydantic

from shared.events import Event, decode_event, encode_event, limits

ORDER = (
    b'{"type":"order_placed","schema_version":1,"event_id":"evt-000000000001",'
    b'"customer_id":"cust-000042","order_id":"ord-0000000123",'
    b'"occurred_at":"2024-05-01T12:34:56.789Z","amount":"129.95","currency":"EUR",'
    b'"channel":"web"}'
)
INTERACTION = (
    b'{"type":"product_view","event_id":"evt-000000000002","customer_id":"cust-000042",'
    b'"occurred_at":"2024-05-01T12:34:56.789Z","properties":{"sku":"SKU-1","position":3}}'
)

PydanticId = Annotated[
    str, pydantic.StringConstraints(pattern=limits.ID_PATTERN, max_length=limits.ID_MAX_LENGTH)
]
PydanticAmount = Annotated[
    Decimal,
    pydantic.Field(ge=0, le=limits.MAX_AMOUNT, decimal_places=limits.AMOUNT_DECIMAL_PLACES),
]


class PydanticLineItem(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    sku: PydanticId
    quantity: Annotated[int, pydantic.Field(ge=1, le=limits.MAX_ITEM_QUANTITY)]
    unit_price: PydanticAmount


class PydanticOrder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    type: Literal["order_placed", "order_refunded", "order_cancelled"]
    schema_version: Literal[1] = 1
    event_id: PydanticId
    customer_id: PydanticId
    order_id: PydanticId
    occurred_at: pydantic.AwareDatetime
    amount: PydanticAmount
    currency: Annotated[str, pydantic.StringConstraints(pattern=limits.CURRENCY_PATTERN)]
    items: Annotated[tuple[PydanticLineItem, ...], pydantic.Field(max_length=limits.MAX_ITEMS)] = ()
    channel: (
        Annotated[str, pydantic.StringConstraints(max_length=limits.MAX_CHANNEL_LENGTH)] | None
    ) = None


_ID = re.compile(limits.ID_PATTERN)
_CURRENCY = re.compile(limits.CURRENCY_PATTERN)


def json_loads_and_check(raw: bytes) -> dict[str, Any]:
    """The hand-written baseline: stdlib parse, then the order rules one by one."""
    record = json.loads(raw, parse_float=Decimal)
    if not isinstance(record, dict) or record.get("type") != "order_placed":
        raise ValueError("type")
    if record.get("schema_version", 1) != 1:
        raise ValueError("schema_version")
    for field in ("event_id", "customer_id", "order_id"):
        value = record[field]
        if not isinstance(value, str) or _ID.search(value) is None:
            raise ValueError(field)
    occurred_at = datetime.fromisoformat(record["occurred_at"])
    if occurred_at.tzinfo is None or occurred_at < limits.MIN_OCCURRED_AT:
        raise ValueError("occurred_at")
    amount = Decimal(record["amount"])
    if not (amount.is_finite() and 0 <= amount <= limits.MAX_AMOUNT):
        raise ValueError("amount")
    if amount.quantize(limits.AMOUNT_QUANTUM) != amount:
        raise ValueError("amount")
    if not isinstance(record["currency"], str) or _CURRENCY.search(record["currency"]) is None:
        raise ValueError("currency")
    channel = record.get("channel")
    if channel is not None and (
        not isinstance(channel, str) or len(channel) > limits.MAX_CHANNEL_LENGTH
    ):
        raise ValueError("channel")
    record["occurred_at"], record["amount"] = occurred_at, amount
    return record


def microseconds_per_call(function: Callable[[], object], *, number: int = 100_000) -> float:
    """Best of seven runs, so that a noisy neighbour does not inflate the figure."""
    best = min(timeit.repeat(function, number=number, repeat=7))
    return best / number * 1e6


def main() -> None:
    """Check the decoders agree on the sample, then print one line per decoder."""
    typed_only: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
    assert (
        decode_event(ORDER)
        == typed_only.decode(ORDER)
        == decode_event(encode_event(decode_event(ORDER)))
    )
    assert PydanticOrder.model_validate_json(ORDER).amount == Decimal("129.95")
    assert json_loads_and_check(ORDER)["amount"] == Decimal("129.95")

    rows = [
        ("decode_event, order", lambda: decode_event(ORDER)),
        ("decode_event, interaction", lambda: decode_event(INTERACTION)),
        ("msgspec typed decode only, order", lambda: typed_only.decode(ORDER)),
        (
            "pydantic v2 model_validate_json, order",
            lambda: PydanticOrder.model_validate_json(ORDER),
        ),
        ("json.loads + manual checks, order", lambda: json_loads_and_check(ORDER)),
    ]
    print(f"order event: {len(ORDER)} bytes, interaction event: {len(INTERACTION)} bytes")
    for label, function in rows:
        print(f"{label:42s} {microseconds_per_call(function):6.2f} µs/event")


if __name__ == "__main__":
    main()
