"""Realistic traffic, produced straight to Kafka with aiokafka, and every record written down.

Orders, refunds (also before their order), cancellations and interactions for customers
whose events go to random partitions on purpose; duplicates (the same bytes again, soon or
much later); late events (event times up to 500 days back, in any order); poison records of
every kind; and erasures through the API, after which the customer's new events start a new
record. The checker gets `Journal`: each record as acknowledged, and each erasure.

Event ages are whole days plus a fraction in [0.05, 0.95]: every threshold of the definitions
and windows is a whole number of days, so no fact sits within an hour of a boundary, and
the API's database answers (windows as of the request's wall-clock time) equal the cached
ones (as of the fixed evaluation time) however long the run takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from tests.chaos.expected import INTERACTION_TYPE_ORDER

CURRENCY_RATES = {
    "EUR": Decimal("1"),
    "USD": Decimal("0.92"),
    "GBP": Decimal("1.17"),
    "SEK": Decimal("0.087"),
}
INTERACTION_TYPES = INTERACTION_TYPE_ORDER
POISON_KINDS = (
    "undecodable",
    "not_an_object",
    "schema_violation",
    "nul_in_id",
    "nul_in_channel",
    "nul_in_properties",
    "oversized",
    "unknown_currency",
    "far_future",
    "before_2000",
    "naive_time",
    "unknown_type",
    "schema_version_2",
    "bad_amount",
)


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


@dataclass
class Sent:
    """One record as Kafka acknowledged it."""

    topic: str
    partition: int
    offset: int
    customer: str | None
    phase: int
    label: str
    sha: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Journal:
    """What the harness did, for the checker: records acknowledged, and erasures."""

    sent: list[Sent] = field(default_factory=list)
    # (customer, phase the erasure ended, monotonic time it was acknowledged)
    erasures: list[tuple[str, int, float]] = field(default_factory=list)
    send_failures: int = 0
    erasure_retries: int = 0
    erasures_abandoned: int = 0

    def phase_of(self) -> dict[str, int]:
        """sha of a record's value -> the customer phase it was sent in."""
        return {s.sha: s.phase for s in self.sent}


@dataclass
class _Customer:
    id: str
    phase: int = 0
    orders: list[tuple[str, str, Decimal]] = field(default_factory=list)
    pending_order: tuple[str, str, Decimal] | None = None
    sent: list[tuple[str, bytes, int]] = field(default_factory=list)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    frozen: bool = False
    inflight: int = 0


def _ts(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Traffic:
    """Generates and sends the records of one run; erases customers now and then."""

    def __init__(
        self,
        seed: int,
        now: datetime,
        bootstrap: str,
        orders_topic: str,
        interactions_topic: str,
        *,
        customers: int,
        rate_per_second: float,
        erase_every_seconds: float,
        poison_kinds: tuple[str, ...] = POISON_KINDS,
    ) -> None:
        self.poison_kinds = poison_kinds
        self.rng = random.Random(f"chaos-traffic:{seed}")
        self.erase_rng = random.Random(f"chaos-erasures:{seed}")
        self.now = now
        self.seed = seed
        self.bootstrap = bootstrap
        self.orders_topic = orders_topic
        self.interactions_topic = interactions_topic
        self.customers = [_Customer(f"c{seed}-{i:04d}") for i in range(customers)]
        self.rate = rate_per_second
        self.erase_every = erase_every_seconds
        self.journal = Journal()
        self.partitions = 4
        self._counter = 0
        self._history: list[tuple[_Customer, str, bytes, int]] = []

    # ------------------------------------------------------------ generation
    def _event_id(self) -> str:
        self._counter += 1
        return f"e{self.seed}-{self._counter}"

    def _age(self, max_days: int) -> datetime:
        days = self.rng.randrange(max_days) + self.rng.uniform(0.05, 0.95)
        return self.now - timedelta(days=days)

    def _order(self, kind: str, c: _Customer, order: tuple[str, str, Decimal]) -> bytes:
        order_id, currency, amount = order
        if kind == "order_refunded":
            amount = (amount * Decimal(self.rng.randrange(10, 101)) / 100).quantize(Decimal("0.01"))
        return json.dumps(
            {
                "type": kind,
                "event_id": self._event_id(),
                "customer_id": c.id,
                "order_id": order_id,
                "occurred_at": _ts(self._age(500)),
                "amount": str(amount),
                "currency": currency,
                "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": str(amount)}],
                "channel": self.rng.choice(["web", "app", "store"]),
            }
        ).encode()

    def _new_order(self, c: _Customer) -> tuple[str, str, Decimal]:
        order_id = f"{c.id}-p{c.phase}-o{self._counter}-{self.rng.randrange(10**6)}"
        currency = self.rng.choice(list(CURRENCY_RATES))
        amount = Decimal(self.rng.randrange(500, 60000)) / 100
        return order_id, currency, amount

    def _interaction(self, c: _Customer) -> bytes:
        props: dict[str, Any] = {"sku": f"SKU-{self.rng.randrange(50)}"}
        return json.dumps(
            {
                "type": self.rng.choice(INTERACTION_TYPES),
                "event_id": self._event_id(),
                "customer_id": c.id,
                "occurred_at": _ts(self._age(60)),
                "properties": props,
            }
        ).encode()

    def _poison(self, c: _Customer) -> tuple[str, bytes, str]:
        kind = self.rng.choice(self.poison_kinds)
        order: dict[str, Any] = {
            "type": "order_placed",
            "event_id": self._event_id(),
            "customer_id": c.id,
            "order_id": f"{c.id}-poison-{self._counter}",
            "occurred_at": _ts(self._age(100)),
            "amount": "12.50",
            "currency": "EUR",
        }
        topic = self.orders_topic
        if kind == "nul_in_properties":
            # Not stored, but a schema violation all the same (shared/events, main's 9bb3273).
            doc = json.loads(self._interaction(c))
            doc["properties"]["note"] = "nul\u0000inside"
            return self.interactions_topic, json.dumps(doc).encode(), kind
        if kind == "undecodable":
            return topic, b'\xff\xfe{"type": "order_placed", trunc', kind
        if kind == "not_an_object":
            return topic, b'["order_placed"]', kind
        if kind == "schema_violation":
            del order["amount"]
        elif kind == "nul_in_id":
            order["customer_id"] = c.id + "\u0000x"
        elif kind == "nul_in_channel":
            order["channel"] = "we\u0000b"
        elif kind == "oversized":
            order["padding"] = "x" * 70_000
        elif kind == "unknown_currency":
            order["currency"] = "XYZ"
        elif kind == "far_future":
            order["occurred_at"] = _ts(self.now + timedelta(days=30))
        elif kind == "before_2000":
            order["occurred_at"] = "1999-12-31T23:00:00Z"
        elif kind == "naive_time":
            order["occurred_at"] = "2024-05-01T12:00:00"
        elif kind == "unknown_type":
            order["type"] = "order_teleported"
        elif kind == "schema_version_2":
            order["schema_version"] = 2
        elif kind == "bad_amount":
            order["amount"] = "1.23456"
        return topic, json.dumps(order).encode(), kind

    def next_record(self) -> tuple[_Customer, str, bytes, str] | None:
        """The next record to send: (customer, topic, value, label)."""
        live = [c for c in self.customers if not c.frozen]
        if not live:
            return None
        c = self.rng.choice(live)
        roll = self.rng.random()
        if roll < 0.04 and self._history:
            # A duplicate: the same bytes again, of a recent record or a long-gone one.
            pool = self._history[-50:] if self.rng.random() < 0.5 else self._history
            old_c, topic, value, phase = self.rng.choice(pool)
            if old_c.phase == phase and not old_c.frozen:
                return old_c, topic, value, "duplicate"
            return None
        if roll < 0.07 and self.poison_kinds:
            topic, value, kind = self._poison(c)
            return c, topic, value, f"poison:{kind}"
        if roll < 0.40:
            if c.pending_order is not None and self.rng.random() < 0.5:
                order, c.pending_order = c.pending_order, None
                c.orders.append(order)
            else:
                order = self._new_order(c)
                c.orders.append(order)
            return c, self.orders_topic, self._order("order_placed", c, order), "order_placed"
        if roll < 0.46 and c.orders:
            order = self.rng.choice(c.orders)
            return c, self.orders_topic, self._order("order_refunded", c, order), "refund"
        if roll < 0.49 and c.orders:
            order = self.rng.choice(c.orders)
            return c, self.orders_topic, self._order("order_cancelled", c, order), "cancel"
        if roll < 0.52 and c.pending_order is None:
            # A refund or cancellation that arrives before its order.
            c.pending_order = self._new_order(c)
            kind = self.rng.choice(["order_refunded", "order_cancelled"])
            return c, self.orders_topic, self._order(kind, c, c.pending_order), f"early:{kind}"
        return c, self.interactions_topic, self._interaction(c), "interaction"

    # ------------------------------------------------------------ sending
    async def _send_one(
        self, producer: AIOKafkaProducer, c: _Customer, topic: str, value: bytes, label: str
    ) -> None:
        partition = self.rng.randrange(self.partitions)
        phase = c.phase
        loop = asyncio.get_running_loop()
        while True:
            try:
                meta = await producer.send_and_wait(
                    topic, value, key=c.id.encode(), partition=partition
                )
                break
            except Exception:
                self.journal.send_failures += 1
                await asyncio.sleep(0.5)
        self.journal.sent.append(
            Sent(
                topic,
                meta.partition,
                meta.offset,
                c.id,
                phase,
                label,
                digest(value),
                loop.time(),
            )
        )
        key = (topic, meta.partition)
        c.ends[key] = max(c.ends.get(key, 0), meta.offset + 1)
        c.inflight -= 1
        if label != "duplicate":
            self._history.append((c, topic, value, phase))

    async def produce_loop(self, stopping: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            max_request_size=2 * 1024 * 1024,
            request_timeout_ms=10_000,
            linger_ms=5,
        )
        await producer.start()
        try:
            loop = asyncio.get_running_loop()
            tick = 0.25
            while not stopping.is_set():
                started = loop.time()
                sends = []
                for _ in range(max(1, round(self.rate * tick))):
                    nxt = self.next_record()
                    if nxt is not None:
                        nxt[0].inflight += 1
                        sends.append(self._send_one(producer, *nxt))
                await asyncio.gather(*sends)
                await asyncio.sleep(max(0.0, tick - (loop.time() - started)))
        finally:
            await producer.stop()

    # ------------------------------------------------------------ erasures
    async def erase_loop(
        self, stopping: asyncio.Event, pg_dsn: str, schema: str, api_url: str, key: str
    ) -> None:
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.erase_every)
                return
            except TimeoutError:
                pass
            candidates = [c for c in self.customers if c.ends and not c.frozen]
            if not candidates:
                continue
            c = self.erase_rng.choice(candidates)
            c.frozen = True
            try:
                if await self._wait_ingested(c, pg_dsn, schema, stopping):
                    await self._erase(c, api_url, key, pg_dsn, schema)
                else:
                    self.journal.erasures_abandoned += 1
            finally:
                c.frozen = False

    async def _wait_ingested(
        self, c: _Customer, dsn: str, schema: str, stopping: asyncio.Event | None = None
    ) -> bool:
        """Until ingest's committed offsets are past every record of `c`: only then is
        "the events before the erasure" a set the checker can know. False: the run ended
        first (ingest may be stuck), and the customer is not erased."""
        while stopping is None or not stopping.is_set():
            try:
                conn = await asyncpg.connect(
                    dsn, timeout=5, server_settings={"search_path": schema}
                )
                try:
                    rows = await conn.fetch(
                        "SELECT topic, partition, next_offset FROM ingest_offsets"
                    )
                finally:
                    await conn.close()
                stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
                if c.inflight == 0 and all(stored.get(k, 0) >= e for k, e in c.ends.items()):
                    return True
            except (OSError, asyncpg.PostgresError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
        return False

    async def _erase(
        self,
        c: _Customer,
        api_url: str,
        key: str,
        dsn: str,
        schema: str,
    ) -> None:
        """DELETE until the API says it is done; erasure is idempotent, so a retry after an
        answer lost to a crash is safe. Once tried, it is never abandoned: an attempt whose
        answer was lost may have erased. Before each retry the offsets are read again: a
        PostgreSQL crash can take back ingest's unflushed commits (and the erasure flushes
        them only when it commits), and their events must not arrive after the erasure."""
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
            first = True
            while True:
                if not first:
                    await self._wait_ingested(c, dsn, schema)
                first = False
                try:
                    r = await http.delete(
                        f"/v1/customers/{c.id}", headers={"Authorization": f"Bearer {key}"}
                    )
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                self.journal.erasure_retries += 1
                await asyncio.sleep(0.5)
        self.journal.erasures.append((c.id, c.phase, loop.time()))
        c.phase += 1
        c.orders, c.pending_order, c.ends = [], None, {}
