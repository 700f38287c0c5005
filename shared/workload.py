"""Realistic shopper behaviour as a stream of events, deterministic for a seed.

Used by the tests' independent checkers, the benchmarks and the load generator. Customer
popularity is skewed (a few customers produce most events), order values are heavy-tailed
(log-normal), refunds and cancellations refer to orders placed before them, and time only
moves forward within the generated stream.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from shared.events import (
    AddToCart,
    EmailClick,
    EmailOpen,
    Event,
    Login,
    OrderCancelled,
    OrderPlaced,
    OrderRefunded,
    PageView,
    ProductView,
    Review,
    Search,
    SupportTicket,
)

INTERACTION_MIX: tuple[tuple[type[Event], float], ...] = (
    (PageView, 0.40),
    (ProductView, 0.25),
    (Search, 0.10),
    (AddToCart, 0.10),
    (EmailOpen, 0.07),
    (EmailClick, 0.04),
    (Login, 0.03),
    (SupportTicket, 0.005),
    (Review, 0.005),
)
T = TypeVar("T")
CURRENCY_MIX: tuple[tuple[str, float], ...] = (("EUR", 0.7), ("USD", 0.2), ("GBP", 0.1))


@dataclass
class Workload:
    """A generator of events for `customers` customers between `start` and `end`."""

    seed: int
    customers: int
    start: datetime
    end: datetime
    order_share: float = 0.25
    refund_share: float = 0.12
    cancel_share: float = 0.08
    skew: float = 1.1
    customer_prefix: str = "c"
    _rng: random.Random = field(init=False, repr=False)
    _weights: list[float] = field(init=False, repr=False)
    _open_orders: dict[str, list[tuple[str, Decimal, str]]] = field(init=False, repr=False)
    _counter: Iterator[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None or self.end <= self.start:
            raise ValueError("start and end must be timezone-aware and start < end")
        self._rng = random.Random(self.seed)
        raw = [1.0 / (rank**self.skew) for rank in range(1, self.customers + 1)]
        self._weights = list(itertools.accumulate(raw))
        self._open_orders = {}
        self._counter = itertools.count()

    def customer(self) -> str:
        """A customer id drawn by popularity."""
        r = self._rng.random() * self._weights[-1]
        return f"{self.customer_prefix}{bisect.bisect_left(self._weights, r):07d}"

    def events(self, n: int) -> Iterator[Event]:
        """`n` events with occurred_at increasing from `start` to `end`."""
        span = (self.end - self.start).total_seconds()
        for i in range(n):
            at = self.start + timedelta(seconds=span * (i + self._rng.random()) / max(n, 1))
            yield self.event_at(min(at, self.end))

    def event_at(self, at: datetime) -> Event:
        """One event at `at`."""
        cid = self.customer()
        event_id = f"e{self.seed}-{next(self._counter)}"
        if self._rng.random() < self.order_share:
            return self._order_event(event_id, cid, at)
        cls = _pick(self._rng, INTERACTION_MIX)
        props: dict[str, str | int | float | bool | None] = {}
        if cls is ProductView or cls is AddToCart:
            props = {"sku": f"sku-{self._rng.randrange(5000)}"}
        elif cls is Search:
            props = {"query": self._rng.choice(("shoes", "jacket", "gift", "sale", "lamp"))}
        return cls(event_id=event_id, customer_id=cid, occurred_at=at, properties=props)  # type: ignore[call-arg]

    def _order_event(self, event_id: str, cid: str, at: datetime) -> Event:
        open_orders = self._open_orders.get(cid)
        r = self._rng.random()
        if open_orders and r < self.refund_share + self.cancel_share:
            idx = self._rng.randrange(len(open_orders))
            order_id, amount, currency = open_orders[idx]
            if r < self.cancel_share:
                open_orders.pop(idx)
                return OrderCancelled(
                    event_id=event_id,
                    customer_id=cid,
                    order_id=order_id,
                    occurred_at=at,
                    amount=amount,
                    currency=currency,
                )
            refund = (amount * Decimal(self._rng.choice((25, 50, 100))) / 100).quantize(
                Decimal("0.01")
            )
            return OrderRefunded(
                event_id=event_id,
                customer_id=cid,
                order_id=order_id,
                occurred_at=at,
                amount=refund,
                currency=currency,
            )
        amount = Decimal(str(round(math.exp(self._rng.gauss(3.7, 1.0)), 2)))
        currency = _pick(self._rng, CURRENCY_MIX)
        order_id = f"o{event_id}"
        self._open_orders.setdefault(cid, []).append((order_id, amount, currency))
        return OrderPlaced(
            event_id=event_id,
            customer_id=cid,
            order_id=order_id,
            occurred_at=at,
            amount=amount,
            currency=currency,
            channel=self._rng.choice(("web", "app", "store")),
        )


def _pick(rng: random.Random, mix: tuple[tuple[T, float], ...]) -> T:
    """Draw from a (value, share) mix; shares add up to 1."""
    r = rng.random()
    for value, share in mix:
        r -= share
        if r <= 0:
            return value
    return mix[-1][0]
