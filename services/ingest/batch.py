"""What a batch of records means for the database, worked out before any I/O.

Pure except for reading the records: the worker prepares the next batch here while the
previous one commits, which is how one worker keeps both cores busy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import msgspec
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ingest import repository as repo
from shared.db.literals import text_array
from shared.events import CustomerTraits, EventRejected, RejectReason
from shared.events.orders import ORDER_EVENT_CLASSES
from shared.events.screening import Screen

AMOUNT_QUANTUM = Decimal("0.0001")
# About 3 ms of decoding between chances for the commit stage to run.
YIELD_EVERY_RECORDS = 256
_ORDER_CLASSES = frozenset(ORDER_EVENT_CLASSES)


def to_base(amount: Decimal, rate: Decimal) -> Decimal:
    """Convert to the base currency, rounded to 4 places half-even."""
    return (amount * rate).quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(slots=True)
class DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    reason: str
    detail: str


@dataclass(slots=True)
class Part:
    """The records of one partition in a batch: offsets [start, end)."""

    tp: TopicPartition
    epoch: int
    start: int
    end: int
    max_event_at: datetime | None = None
    event_ids: list[str] = field(default_factory=list)
    # The record of each event id above, in the same order: what a poison event found only
    # by the database is dead-lettered with.
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class Changes:
    """Row changes for the repository, keys sorted so concurrent workers lock in one order."""

    orders: list[repo.OrderChange]
    window_rows: list[repo.InteractionRecord]
    pending: list[repo.PendingRecord]
    touches: list[repo.CustomerTouch]
    order_customers: list[str]
    # Profile events, merged per trait at commit time under their rows' locks: the merge
    # reads what is stored, so it cannot be prepared as the aggregates are.
    traits: list[CustomerTraits]
    # The statements and their arguments, encoded here so that the commit stage only sends
    # them.
    statements: list[tuple[str, tuple[Any, ...]]]
    queue_args: tuple[Any, ...]


@dataclass(slots=True)
class PreparedBatch:
    parts: list[Part]
    # First delivery of each event id: a duplicate inside one batch is a duplicate too.
    events: dict[str, Any]
    # Built assuming every event is new; rebuilt in the rare batch that holds duplicates.
    changes: Changes
    # The event ids sorted (so concurrent workers lock ledger rows in one order), and as
    # the dedup statement's argument.
    event_ids: list[str] = field(init=False)
    event_ids_arg: str = field(init=False)

    def __post_init__(self) -> None:
        self.event_ids = sorted(self.events)
        self.event_ids_arg = text_array(self.event_ids)


_json = msgspec.json.Encoder()


def _items_json(items: Any, rate: Decimal) -> str | None:
    """An order's lines as stored: unit prices in base currency, like the order's amount."""
    if not items:
        return None
    lines = [
        {
            "sku": item.sku,
            "category": item.category,
            "quantity": item.quantity,
            "unit_price": str(to_base(item.unit_price, rate)),
        }
        for item in items
    ]
    return _json.encode(lines).decode()


def build_changes(
    events: list[Any],
    rates: dict[str, Decimal],
    retention_start: datetime,
    *,
    with_statements: bool = True,
) -> Changes:
    """Fold events into per-row changes; every merge is commutative, as in the database.

    Without `with_statements` the statements' arguments are not built (the importer sends
    the changes by COPY, `repository.apply_staged`)."""
    orders: dict[tuple[str, str], repo.OrderChange] = {}
    touches: dict[str, repo.CustomerTouch] = {}
    window_rows: list[repo.InteractionRecord] = []
    pending: list[repo.PendingRecord] = []
    order_customers: set[str] = set()
    traits: list[CustomerTraits] = []
    for ev in events:
        cid, at = ev.customer_id, ev.occurred_at
        touch = touches.get(cid)
        if touch is None:
            touch = touches[cid] = repo.CustomerTouch(cid, last_event_at=at)
        elif touch.last_event_at is None or at > touch.last_event_at:
            touch.last_event_at = at
        if type(ev) in _ORDER_CLASSES:
            order_customers.add(cid)
            key = (cid, ev.order_id)
            change = orders.get(key)
            if change is None:
                change = orders[key] = repo.OrderChange(cid, ev.order_id)
            amount = to_base(ev.amount, rates[ev.currency])
            if ev.type == "order_placed":
                # The earliest placement of an order id wins (ties: the smaller event id),
                # as it does in the database.
                if change.placed_at is None or (at, ev.event_id) < (
                    change.placed_at,
                    change.placed_event_id or "",
                ):
                    change.placed_at, change.amount, change.channel = at, amount, ev.channel
                    change.placed_event_id = ev.event_id
                    change.currency = ev.currency
                    change.items = _items_json(ev.items, rates[ev.currency])
            elif ev.type == "order_refunded":
                change.refunded += amount
            elif change.cancelled_at is None or at < change.cancelled_at:
                change.cancelled_at = at
            continue
        if type(ev) is CustomerTraits:
            # The touch above makes the customer one (an aggregates row) and queues them.
            traits.append(ev)
            continue
        touch.counts[ev.type] = touch.counts.get(ev.type, 0) + 1
        if touch.last_interaction_at is None or at > touch.last_interaction_at:
            touch.last_interaction_at = at
        if ev.type == "add_to_cart" and (
            touch.last_add_to_cart_at is None or at > touch.last_add_to_cart_at
        ):
            touch.last_add_to_cart_at = at
        properties = _json.encode(ev.properties).decode() if ev.properties else None
        if at > retention_start:
            window_rows.append((cid, at, ev.type, ev.event_id, properties))
        pending.append((cid, None, ev.event_id, at, ev.type, properties))
    order_changes = [orders[k] for k in sorted(orders)]
    pending.extend((c.customer_id, c.order_id, None, None, None, None) for c in order_changes)
    touch_list = [touches[k] for k in sorted(touches)]
    order_ids = sorted(order_customers)
    return Changes(
        orders=order_changes,
        window_rows=window_rows,
        pending=pending,
        touches=touch_list,
        order_customers=order_ids,
        traits=sorted(traits, key=lambda ev: ev.customer_id),
        statements=repo.touch_args(touch_list, order_ids, order_changes) if with_statements else [],
        queue_args=repo.queue_args(
            [t.customer_id for t in touch_list], [t.last_event_at for t in touch_list]
        )
        if with_statements
        else (),
    )


async def prepare(
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    fetched: dict[TopicPartition, int],
    epochs: dict[TopicPartition, int],
    screen: Screen,
    rates: dict[str, Decimal],
    now: datetime,
    retention: timedelta,
    *,
    present: datetime | None = None,
) -> PreparedBatch | None:
    """Turn fetched records into a PreparedBatch, advancing `fetched` per partition.

    Records of partitions we do not own, or before the offset we resume from, are skipped:
    they were fetched before a rebalance or a seek. Event times are checked against
    `present` (by default `now`; the real present when `now` is a replay's event time).
    """
    parts: list[Part] = []
    events: dict[str, Any] = {}
    screened = 0
    checked_at = now if present is None else present
    # Positions as they were when the records were fetched, read before the first yield: a
    # claim during a yield moves them, and records must be checked against the old ones.
    positions = {tp: (fetched.get(tp), epochs.get(tp)) for tp in batch}
    for tp, records in batch.items():
        start, epoch = positions[tp]
        if start is None or epoch is None:
            continue
        part = Part(tp, epoch, start, start)
        found: list[Any] = []
        for rec in records:
            if rec.offset < part.end:
                continue
            screened += 1
            if screened % YIELD_EVERY_RECORDS == 0:
                # The commit stage can send its next statement only when we hand the loop
                # back: without this, PostgreSQL idles while a whole batch is decoded.
                await asyncio.sleep(0)
            part.end = rec.offset + 1
            try:
                event = screen(rec.value or b"", checked_at, rec.topic)
            except EventRejected as exc:
                part.dead_letters.append(DeadLetter(rec, str(exc.reason), str(exc)))
                continue
            part.event_ids.append(event.event_id)
            part.records.append(rec)
            if part.max_event_at is None or event.occurred_at > part.max_event_at:
                part.max_event_at = event.occurred_at
            found.append(event)
        # A rebalance may have run while we yielded; a partition lost or sought meanwhile
        # is read again by its owner from its own position.
        if part.end > part.start and epochs.get(tp) == epoch and fetched.get(tp) == start:
            fetched[tp] = part.end
            parts.append(part)
            for event in found:
                events.setdefault(event.event_id, event)
    if not parts:
        return None
    changes = build_changes(list(events.values()), rates, now - retention)
    return PreparedBatch(parts, events, changes)


def without_poison(
    prepared: PreparedBatch,
    poison: dict[str, str],
    rates: dict[str, Decimal],
    retention_start: datetime,
) -> PreparedBatch:
    """The batch with the events in `poison` (event id: why) moved to the dead letters."""
    parts = []
    for part in prepared.parts:
        kept = Part(part.tp, part.epoch, part.start, part.end, part.max_event_at)
        kept.dead_letters = list(part.dead_letters)
        for event_id, rec in zip(part.event_ids, part.records, strict=True):
            if event_id in poison:
                kept.dead_letters.append(
                    DeadLetter(rec, str(RejectReason.REJECTED_BY_DATABASE), poison[event_id])
                )
            else:
                kept.event_ids.append(event_id)
                kept.records.append(rec)
        parts.append(kept)
    events = {eid: ev for eid, ev in prepared.events.items() if eid not in poison}
    return PreparedBatch(
        parts, events, build_changes(list(events.values()), rates, retention_start)
    )
