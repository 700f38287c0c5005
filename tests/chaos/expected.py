"""The expected final state, from the input alone: the chaos checker's model.

Plain Python and the standard library: it decodes the JSON itself, validates it by the
contract in docs/events.md, folds the aggregates and evaluates the chaos definitions
(tests/chaos/definitions/*.yaml) by rules written out again below. It imports nothing from
services/ or shared/, so a defect there shows up as a difference instead of being repeated.

Its input: the records on the input topics (read back from Kafka, so in-doubt sends that
did land count too), which customer phase each record was sent in (from the harness's
journal), how many times each customer was erased, and the clock's fixed `now`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

ORDER_TYPES = frozenset({"order_placed", "order_refunded", "order_cancelled"})
# In the order the traffic draws them from (tests/chaos/traffic.py), which a seed depends on.
INTERACTION_TYPE_ORDER = (
    "page_view",
    "product_view",
    "add_to_cart",
    "search",
    "email_open",
    "email_click",
    "login",
    "support_ticket",
    "review",
)
INTERACTION_TYPES = frozenset(INTERACTION_TYPE_ORDER)
ID = re.compile(r"[A-Za-z0-9._:@\-]{1,128}")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_RECORD_BYTES = 65_536
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
Q = Decimal("0.0001")
DAY = timedelta(days=1)

# The chaos definitions, written out again: (name, top_spend percent, lifecycle new/active
# days, engagement engaged days, has the cart dimension).
RULES = {
    "v1": {"top_percent": 10, "new_days": 30, "active_days": 90, "engaged_days": 7, "cart": False},
    "v2": {"top_percent": 20, "new_days": 14, "active_days": 60, "engaged_days": 3, "cart": True},
}


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


KNOWN_FIELDS = (
    "type",
    "event_id",
    "customer_id",
    "order_id",
    "occurred_at",
    "amount",
    "currency",
    "items",
    "channel",
    "properties",
)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in str(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _time(raw: Any, now: datetime) -> datetime:
    if not isinstance(raw, str):
        raise Rejected("schema_violation")
    try:
        at = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise Rejected("schema_violation") from exc
    if at.tzinfo is None or at < EARLIEST:
        raise Rejected("schema_violation")
    if at > now + DAY:
        raise Rejected("occurred_at_out_of_range")
    return at.astimezone(UTC)


def _amount(raw: Any) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise Rejected("schema_violation")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise Rejected("schema_violation") from exc
    if not value.is_finite() or value < 0 or value > Decimal("1e12") or value % Q != 0:
        raise Rejected("schema_violation")
    return value


def _id(raw: Any) -> str:
    if not isinstance(raw, str) or not ID.fullmatch(raw):
        raise Rejected("schema_violation")
    return raw


def validate(value: bytes, now: datetime, rates: Mapping[str, Decimal]) -> dict[str, Any]:
    """The event as a dict of typed values, or Rejected with the contract's reason.

    Beyond docs/events.md, as shared/events decodes since main's 9bb3273: U+0000 in any
    string of a known field (key or value) is a schema violation; PostgreSQL's text cannot
    hold it. Unknown top-level fields are ignored, NULs in them too."""
    if len(value) > MAX_RECORD_BYTES:
        raise Rejected("oversized")
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("undecodable") from exc
    if not isinstance(doc, dict):
        raise Rejected("schema_violation")
    version = doc.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise Rejected("schema_violation")
    if version != 1:
        raise Rejected("unsupported_schema_version")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise Rejected("schema_violation")
    if any(_has_nul(doc.get(name)) for name in KNOWN_FIELDS):
        raise Rejected("schema_violation")
    if kind not in ORDER_TYPES and kind not in INTERACTION_TYPES:
        raise Rejected("unknown_event_type")
    event: dict[str, Any] = {
        "type": kind,
        "event_id": _id(doc.get("event_id")),
        "customer_id": _id(doc.get("customer_id")),
        "occurred_at": _time(doc.get("occurred_at"), now),
    }
    if kind in ORDER_TYPES:
        event["order_id"] = _id(doc.get("order_id"))
        event["amount"] = _amount(doc.get("amount"))
        for item in doc.get("items", []):
            _id(item.get("sku"))
            _amount(item.get("unit_price"))
        channel = doc.get("channel")
        if channel is not None and (not isinstance(channel, str) or not 1 <= len(channel) <= 32):
            raise Rejected("schema_violation")
        currency = doc.get("currency")
        if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
            raise Rejected("schema_violation")
        if currency not in rates:
            raise Rejected("unknown_currency")
        event["amount_base"] = (event["amount"] * rates[currency]).quantize(
            Q, rounding=ROUND_HALF_EVEN
        )
    else:
        props = doc.get("properties", {})
        if not isinstance(props, dict) or len(props) > 50:
            raise Rejected("schema_violation")
        for k, v in props.items():
            if not 1 <= len(k) <= 64 or isinstance(v, dict | list):
                raise Rejected("schema_violation")
            if isinstance(v, str) and len(v) > 1024:
                raise Rejected("schema_violation")
    return event


@dataclass
class Expected:
    aggregates: dict[str, dict[str, Any]]
    segments: dict[str, dict[str, str]]
    top_spend: Decimal | None
    accepted: int
    rejected: dict[str, int]
    rejected_at: set[tuple[str, int, int]]
    duplicates: int
    erased_events: int


def expected_state(
    records: Iterable[tuple[str, int, int, bytes]],
    phase_of: Mapping[str, int],
    final_phase: Mapping[str, int],
    now: datetime,
    rates: Mapping[str, Decimal],
    rules: str,
) -> Expected:
    """Aggregates and segments of every customer, from the input records alone."""
    seen: set[str] = set()
    rejected: dict[str, int] = defaultdict(int)
    rejected_at: set[tuple[str, int, int]] = set()
    placed: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
    refunded: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    cancelled: set[tuple[str, str]] = set()
    interactions: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    customers: set[str] = set()
    accepted = duplicates = erased = 0
    for topic, partition, offset, value in records:
        try:
            ev = validate(value, now, rates)
        except Rejected as r:
            rejected[r.reason] += 1
            rejected_at.add((topic, partition, offset))
            continue
        if ev["event_id"] in seen:
            duplicates += 1
            continue
        seen.add(ev["event_id"])
        accepted += 1
        cid = ev["customer_id"]
        # Events sent before the customer's last erasure are gone with it.
        if phase_of.get(sha(value), -1) != final_phase.get(cid, 0):
            erased += 1
            continue
        customers.add(cid)
        if ev["type"] in ORDER_TYPES:
            key = (cid, ev["order_id"])
            if ev["type"] == "order_placed":
                if key not in placed or ev["occurred_at"] < placed[key][0]:
                    placed[key] = (ev["occurred_at"], ev["amount_base"])
            elif ev["type"] == "order_refunded":
                refunded[key] += ev["amount_base"]
            else:
                cancelled.add(key)
        else:
            interactions[cid].append((ev["occurred_at"], ev["type"]))

    aggregates: dict[str, dict[str, Any]] = {}
    for cid in customers:
        orders = [
            (at, max(amount - refunded.get(key, Decimal(0)), Decimal(0)))
            for key, (at, amount) in placed.items()
            if key[0] == cid and key not in cancelled
        ]
        inter = interactions.get(cid, [])

        def within(days: int, rows: list[tuple[datetime, Any]]) -> list[tuple[datetime, Any]]:
            return [r for r in rows if now - timedelta(days=days) < r[0] <= now]

        last_order = max((at for at, _ in orders), default=None)
        last_cart = max((at for at, kind in inter if kind == "add_to_cart"), default=None)
        aggregates[cid] = {
            "order_count": len(orders),
            "net_spend": sum((n for _, n in orders), Decimal(0)),
            "spend_365d": sum((n for _, n in within(365, orders)), Decimal(0)),
            "orders_365d": len(within(365, orders)),
            "first_order_at": min((at for at, _ in orders), default=None),
            "last_order_at": last_order,
            "interaction_count": len(inter),
            "interactions_30d": len(within(30, inter)),
            "last_interaction_at": max((at for at, _ in inter), default=None),
            "open_cart_at": last_cart
            if last_cart is not None and (last_order is None or last_cart > last_order)
            else None,
        }
    rule = RULES[rules]
    positive = sorted(a["spend_365d"] for a in aggregates.values() if a["spend_365d"] > 0)
    top_spend = None
    if positive:
        top = max(1, math.ceil(len(positive) * rule["top_percent"] / 100))
        top_spend = positive[len(positive) - top]
    segments = {cid: _segments(a, now, rule, top_spend) for cid, a in aggregates.items()}
    return Expected(
        aggregates,
        segments,
        top_spend,
        accepted,
        dict(rejected),
        rejected_at,
        duplicates,
        erased,
    )


def _days(now: datetime, at: datetime | None) -> float | None:
    return None if at is None else max((now - at) / DAY, 0.0)


def _segments(
    a: dict[str, Any], now: datetime, rule: Mapping[str, Any], top_spend: Decimal | None
) -> dict[str, str]:
    first, last = _days(now, a["first_order_at"]), _days(now, a["last_order_at"])
    if a["order_count"] == 0 or first is None or last is None:
        lifecycle = "prospect"
    elif first < rule["new_days"]:
        lifecycle = "new"
    elif last < rule["active_days"]:
        lifecycle = "active"
    else:
        lifecycle = "lapsed"
    seen = _days(now, a["last_interaction_at"])
    if seen is None:
        engagement = "none"
    elif seen < rule["engaged_days"]:
        engagement = "engaged"
    elif seen < 30:
        engagement = "casual"
    else:
        engagement = "dormant"
    spend = a["spend_365d"]
    if spend <= 0:
        value = "none"
    elif top_spend is not None and spend >= top_spend:
        value = "top"
    else:
        value = "buyer"
    out = {"lifecycle": lifecycle, "engagement": engagement, "value": value}
    if rule["cart"]:
        out["cart"] = "abandoned" if a["open_cart_at"] is not None else "clear"
    return out
