"""Every check a record passes before ingest applies it, in one place: the ingest worker
screens each Kafka record with it, and the API each event of `POST /v1/events` before
producing it, so an event the API accepts is one ingest accepts.

Pure: the decoders, the clock bound on `occurred_at` (against the caller's `now`) and the
configured currencies; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.events.decoding import check_occurred_at, decode_customer_event, decode_event
from shared.events.errors import EventRejected, RejectReason
from shared.events.orders import ORDER_EVENT_CLASSES

_ORDER_CLASSES = frozenset(ORDER_EVENT_CLASSES)


class Screen:
    """Decodes and checks records; anything that can never be applied raises EventRejected.

    Each topic carries one family: records of `customers_topic` are profile events."""

    def __init__(self, currency_rates: Mapping[str, Decimal], customers_topic: str = "") -> None:
        self._rates = currency_rates
        self._customers_topic = customers_topic

    def __call__(self, raw: bytes, now: datetime, topic: str = "") -> Any:
        event: Any
        if topic and topic == self._customers_topic:
            event = decode_customer_event(raw)
        else:
            event = decode_event(raw)
        if type(event) in _ORDER_CLASSES and event.currency not in self._rates:
            raise EventRejected(
                RejectReason.UNKNOWN_CURRENCY,
                "$.currency",
                f"{event.currency!r} has no configured rate",
            )
        check_occurred_at(event.occurred_at, now=now)
        return event
