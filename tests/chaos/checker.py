"""The independent checker: the expected final state from the input alone, and every
difference from what the pipeline stored, published and served.

Plain Python and the standard library: it decodes the JSON itself, validates it by the
contract in docs/events.md, folds the aggregates and evaluates the chaos definitions
(tests/chaos/definitions/*.yaml) by rules written out again below. It imports nothing from
services/ or shared/, so a defect there shows up as a difference instead of being repeated.

Its input: the records on the input topics (read back from Kafka, so in-doubt sends that
did land count too), the journal of the harness (which customer phase each record was sent
in, and the erasures), and the clock's fixed `now`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

ORDER_TYPES = frozenset({"order_placed", "order_refunded", "order_cancelled"})
INTERACTION_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "add_to_cart",
        "search",
        "email_open",
        "email_click",
        "login",
        "support_ticket",
        "review",
    }
)
ID = re.compile(r"[A-Za-z0-9._:@\-]{1,128}")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_RECORD_BYTES = 65_536
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
Q = Decimal("0.0001")
DAY = timedelta(days=1)
EXAMPLES = 5

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


# ---------------------------------------------------------------- comparing
@dataclass
class Findings:
    """Mismatches by category, each with a count and the first few examples."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, category: str, example: str) -> None:
        self.counts[category] += 1
        if len(self.examples[category]) < EXAMPLES:
            self.examples[category].append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            c: {"count": n, "examples": self.examples[c]} for c, n in sorted(self.counts.items())
        }


def _parse_time(raw: Any) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw).astimezone(UTC)


AGGREGATE_FIELDS = (
    "order_count",
    "net_spend",
    "spend_365d",
    "orders_365d",
    "first_order_at",
    "last_order_at",
    "interaction_count",
    "interactions_30d",
    "last_interaction_at",
    "open_cart_at",
)


def _aggregate_diffs(want: Mapping[str, Any], got: Mapping[str, Any] | None) -> list[str]:
    if got is None:
        return ["aggregates: none"]
    diffs = []
    for name in AGGREGATE_FIELDS:
        raw = got.get(name)
        if name.endswith("_at"):
            value: Any = _parse_time(raw)
        elif name in ("net_spend", "spend_365d"):
            value = Decimal(str(raw))
        else:
            value = raw
        if value != want[name]:
            diffs.append(f"{name}: expected {want[name]}, got {value}")
    return diffs


def _classify_aggregates(want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    counts = ("order_count", "interaction_count")
    if any(got.get(n, 0) < want[n] for n in counts):
        return "aggregates_lost"
    if any(got.get(n, 0) > want[n] for n in counts):
        return "aggregates_doubled"
    return "aggregates_wrong"


def compare_api(
    findings: Findings,
    expected: Expected,
    answers: Mapping[str, Mapping[str, Any]],
    source: str,
    definition_version: int | None,
) -> None:
    """The API's answers (`source`: cache or database) against the expected final state."""
    for cid in sorted(set(expected.segments) | set(answers)):
        got = answers.get(cid)
        if cid not in expected.segments:
            findings.add(f"api_{source}_erased_customer_served", cid)
            continue
        if got is None:
            findings.add(f"api_{source}_customer_missing", cid)
            continue
        segs = {d: s["segment"] for d, s in got.get("segments", {}).items()}
        if segs != expected.segments[cid]:
            findings.add(
                f"api_{source}_wrong_segments",
                f"{cid}: expected {expected.segments[cid]}, got {segs} (from {got.get('source')})",
            )
        if definition_version is not None and got.get("definition_version") != definition_version:
            findings.add(
                f"api_{source}_old_definitions",
                f"{cid}: definition_version {got.get('definition_version')}",
            )
        diffs = _aggregate_diffs(expected.aggregates[cid], got.get("aggregates"))
        if diffs:
            agg = got.get("aggregates") or {}
            category = (
                _classify_aggregates(expected.aggregates[cid], agg)
                if source == "database"
                else "api_cache_stale_aggregates"
            )
            findings.add(category, f"{cid} (from {got.get('source')}): " + "; ".join(diffs))


def compare_database_segments(
    findings: Findings, expected: Expected, stored: Mapping[str, Mapping[str, str]]
) -> None:
    for cid in sorted(set(expected.segments) | set(stored)):
        if cid not in expected.segments:
            findings.add("segments_of_erased_or_unknown_customer", f"{cid}: {stored[cid]}")
        elif cid not in stored:
            findings.add("segments_missing", cid)
        elif dict(stored[cid]) != expected.segments[cid]:
            findings.add(
                "segments_wrong",
                f"{cid}: expected {expected.segments[cid]}, got {dict(stored[cid])}",
            )


def compare_changes(
    findings: Findings,
    history: list[dict[str, Any]],
    published: list[tuple[int, int, bytes]],
    erased_customers: set[str],
) -> dict[str, int]:
    """The change topic against segment_history: every row exactly once (after dedup by
    id), no id reused for other content, and each customer's changes in sequence order."""
    # Every distinct content each id was published with, and where it first appeared.
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    first_at: dict[tuple[str, str], tuple[int, int]] = {}
    raw_records = 0
    for partition, offset, value in sorted(published):
        raw_records += 1
        try:
            doc = json.loads(value)
            change_id, data = str(doc["id"]), doc["data"]
        except (ValueError, KeyError, TypeError):
            findings.add("change_undecodable", f"segment-changes[{partition}]@{offset}")
            continue
        if data in by_id[change_id]:
            continue
        if by_id[change_id]:
            findings.add(
                "change_id_reused",
                f"{change_id} ({data.get('customer_id')}): {by_id[change_id][0]} then {data}",
            )
        by_id[change_id].append(data)
        first_at[(change_id, _content_key(data))] = (partition, offset)
    rows = {str(r["change_id"]): r for r in history}
    found_at: dict[str, tuple[int, int]] = {}
    for change_id, r in sorted(
        rows.items(), key=lambda kv: (kv[1]["customer_id"], kv[1]["sequence"])
    ):
        versions = by_id.get(change_id, [])
        if not versions:
            findings.add(
                "history_row_not_published",
                f"{r['customer_id']} {r['dimension']} seq {r['sequence']}: {change_id}",
            )
            continue
        matching = [d for d in versions if _same_change(d, r)]
        if not matching:
            findings.add(
                "history_row_published_differently",
                f"{change_id}: row {r['from_segment']}->{r['to_segment']} seq {r['sequence']},"
                f" topic {[(d.get('from_segment'), d.get('to_segment')) for d in versions]}",
            )
            continue
        # After an erasure an id may be reused for identical content: the later one is ours.
        found_at[change_id] = max(first_at[(change_id, _content_key(d))] for d in matching)
    for change_id, versions in by_id.items():
        for data in versions:
            if change_id not in rows and data.get("customer_id") not in erased_customers:
                findings.add(
                    "published_change_without_history_row",
                    f"{change_id} {data.get('customer_id')} seq {data.get('sequence')}",
                )
    # Order per customer: the current history rows, in topic order, have rising sequences.
    per_customer: dict[str, list[tuple[tuple[int, int], int]]] = defaultdict(list)
    for change_id, r in rows.items():
        if change_id in found_at:
            per_customer[r["customer_id"]].append((found_at[change_id], r["sequence"]))
    for cid, items in per_customer.items():
        sequences = [s for _, s in sorted(items)]
        if sequences != sorted(sequences) or len({p for (p, _), _ in items}) > 1:
            findings.add("change_order_violated", f"{cid}: sequences in topic order {sequences}")
    # Each dimension's chain: every change starts where the previous one ended.
    chains: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in history:
        chains[(r["customer_id"], r["dimension"])].append(r)
    for (cid, dim), chain in chains.items():
        chain.sort(key=lambda r: r["sequence"])
        for before, after in itertools.pairwise(chain):
            if after["from_segment"] != before["to_segment"]:
                findings.add(
                    "history_chain_broken",
                    f"{cid} {dim}: seq {before['sequence']} ->{before['to_segment']},"
                    f" seq {after['sequence']} {after['from_segment']}->",
                )
    return {
        "change_records": raw_records,
        "distinct_change_ids": len(by_id),
        "distinct_changes": sum(len(v) for v in by_id.values()),
    }


def _same_change(data: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """A published change and a history row say the same thing."""
    caused = data.get("caused_by_event_time")
    return bool(
        data.get("from_segment") == row["from_segment"]
        and data.get("to_segment") == row["to_segment"]
        and data.get("sequence") == row["sequence"]
        and data.get("reason") == row["reason"]
        and data.get("definition_version") == row["definition_version"]
        and _parse_time(caused) == row["caused_by_event_at"]
    )


def _content_key(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def compare_history_with_segments(
    findings: Findings, history: list[dict[str, Any]], stored: Mapping[str, Mapping[str, str]]
) -> None:
    """The last change of each dimension ends in the customer's current segment."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history:
        key = (r["customer_id"], r["dimension"])
        if key not in last or r["sequence"] > last[key]["sequence"]:
            last[key] = r
    for cid, segs in stored.items():
        for dim, seg in segs.items():
            final = last.get((cid, dim))
            if final is None or final["to_segment"] != seg:
                findings.add(
                    "history_disagrees_with_segment",
                    f"{cid} {dim}: segment {seg}, last change to "
                    f"{None if final is None else final['to_segment']}",
                )


def compare_dead_letters(
    findings: Findings, expected: Expected, dead: Iterable[tuple[str, int, int]]
) -> None:
    """Every rejected record dead-lettered (at least once), and no accepted one."""
    dead_set = set(dead)
    for where in sorted(expected.rejected_at - dead_set):
        findings.add("dead_letter_missing", f"{where[0]}[{where[1]}]@{where[2]}")
    for where in sorted(dead_set - expected.rejected_at):
        findings.add("dead_letter_of_a_valid_record", f"{where[0]}[{where[1]}]@{where[2]}")
