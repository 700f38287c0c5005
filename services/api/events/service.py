"""A batch of events screened as ingest screens records, and routed to ingest's topics.

Every event is checked by `shared.events.screening.Screen`, the very function the ingest
worker applies to each Kafka record (the decoders, the configured currencies and the clock
bound on `occurred_at`), and produced as the bytes it was sent as: what is accepted here is
what ingest accepts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from services.api.errors import ApiError
from services.api.events.schemas import MAX_BATCH_EVENTS, RejectedEvent
from services.api.publisher import Record
from services.api.settings import ApiSettings
from shared.events import CUSTOMER_EVENT_TYPES, CustomerEvent, Event, EventRejected, OrderEvent
from shared.events.screening import Screen


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    # Raw: each event is kept as the bytes it was sent as, and decoded by the contract.
    events: list[msgspec.Raw]


class _Peek(msgspec.Struct):
    """What an event says it is, before the contract checks it."""

    type: Any = None
    event_id: Any = None


_batch_decoder = msgspec.json.Decoder(_Batch)
_peek_decoder = msgspec.json.Decoder(_Peek)


@dataclass(slots=True)
class ScreenedBatch:
    records: list[Record] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)
    rejections: list[RejectedEvent] = field(default_factory=list)


class EventIntake:
    """Screens batches for the topics and currencies ingest is configured with."""

    def __init__(self, settings: ApiSettings) -> None:
        self._screen = Screen(settings.currency_rates, settings.customers_topic)
        self._orders = settings.orders_topic
        self._interactions = settings.interactions_topic
        self._customers = settings.customers_topic

    def screen(self, body: bytes, now: datetime) -> ScreenedBatch:
        """Each event of `body` as a record for its topic, keyed by customer id, or as a
        rejection saying why ingest would refuse it. ApiError 422 when the body is not a
        batch of 1 to MAX_BATCH_EVENTS events."""
        try:
            batch = _batch_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _invalid_batch(f"body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise _invalid_batch(f"body is not JSON: {exc}") from None
        count = len(batch.events)
        if count == 0:
            raise _invalid_batch("body.events: a batch holds at least one event")
        if count > MAX_BATCH_EVENTS:
            raise _invalid_batch(
                f"body.events: a batch holds at most {MAX_BATCH_EVENTS} events, this one "
                f"has {count}: send it as {-(-count // MAX_BATCH_EVENTS)} batches"
            )
        out = ScreenedBatch()
        for index, item in enumerate(batch.events):
            raw = bytes(item)
            try:
                peek = _peek_decoder.decode(raw)
            except msgspec.DecodeError:
                peek = _Peek()  # not an object: the contract's decoder says why
            is_customer_event = isinstance(peek.type, str) and peek.type in CUSTOMER_EVENT_TYPES
            try:
                event = self._screen(raw, now, self._customers if is_customer_event else "")
            except EventRejected as rejected:
                event_id = peek.event_id if isinstance(peek.event_id, str) else None
                out.rejections.append(_rejection(index, event_id, rejected))
                continue
            out.records.append((self._topic(event), event.customer_id.encode(), raw))
            out.types[event.type] += 1
        return out

    def _topic(self, event: Event | CustomerEvent) -> str:
        if isinstance(event, CustomerEvent):
            return self._customers
        return self._orders if isinstance(event, OrderEvent) else self._interactions


def _rejection(index: int, event_id: str | None, rejected: EventRejected) -> RejectedEvent:
    return RejectedEvent(
        index=index,
        event_id=event_id,
        reason=str(rejected.reason),
        field=rejected.field,
        detail=rejected.detail,
    )


def _invalid_batch(detail: str) -> ApiError:
    location, _, message = detail.partition(": ")
    problems = [{"location": location, "message": message}]
    return ApiError(422, "validation_error", detail, problems=problems)
