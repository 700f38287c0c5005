"""The chaos checker and schedule on their own: no stack, a second or less."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.chaos import checker
from tests.chaos import expected as model
from tests.chaos.schedule import make_schedule
from tests.chaos.traffic import CURRENCY_RATES, POISON_KINDS, Traffic

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _ts(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


def _order(kind: str, eid: str, oid: str, amount: str, days_ago: float, **extra: Any) -> bytes:
    doc = {
        "type": kind,
        "event_id": eid,
        "customer_id": "c1",
        "order_id": oid,
        "occurred_at": _ts(days_ago),
        "amount": amount,
        "currency": "EUR",
        **extra,
    }
    return json.dumps(doc).encode()


def _interaction(eid: str, kind: str, days_ago: float) -> bytes:
    return json.dumps(
        {"type": kind, "event_id": eid, "customer_id": "c1", "occurred_at": _ts(days_ago)}
    ).encode()


def test_the_schedule_is_a_function_of_the_seed() -> None:
    assert make_schedule(7, 300) == make_schedule(7, 300)
    assert make_schedule(7, 300) != make_schedule(8, 300)
    faults = make_schedule(7, 300).faults
    gaps = [b.at_seconds - a.at_seconds for a, b in itertools.pairwise(faults)]
    assert [f.kind for f in faults].count("definitions_change") == 1
    assert all(g >= 0 for g in gaps)


def test_every_poison_kind_the_traffic_sends_is_rejected() -> None:
    traffic = Traffic(
        1, NOW, "unused", "o", "i", customers=3, rate_per_second=1, erase_every_seconds=1
    )
    seen = set()
    for _ in range(5000):
        _, value, kind = traffic._poison(traffic.customers[0])
        seen.add(kind)
        with pytest.raises(model.Rejected):
            model.validate(value, NOW, CURRENCY_RATES)
    assert seen == set(POISON_KINDS)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff", "undecodable"),
        (b"[]", "schema_violation"),
        (_order("order_placed", "e", "o", "1", 1, currency="XYZ"), "unknown_currency"),
        (_order("order_placed", "e", "o", "1.00001", 1), "schema_violation"),
        (_order("order_placed", "e", "o", "1", -3), "occurred_at_out_of_range"),
        (_order("order_placed", "e", "o", "1", 1, schema_version=2), "unsupported_schema_version"),
        (_order("order_placed", "e", "o", "1", 1, channel="a\x00b"), "schema_violation"),
        (_order("order_placed", "e", "o", "1", 1, padding="x" * 70_000), "oversized"),
    ],
)
def test_rejections_name_the_contracts_reason(value: bytes, reason: str) -> None:
    with pytest.raises(model.Rejected) as info:
        model.validate(value, NOW, CURRENCY_RATES)
    assert info.value.reason == reason


def test_aggregates_and_segments_from_the_input_alone() -> None:
    records = [
        _order("order_refunded", "e1", "o1", "10", 40.5),  # before its order
        _order("order_placed", "e2", "o1", "100", 40.5),
        _order("order_placed", "e2", "o1", "100", 40.5),  # a duplicate delivery
        _order("order_placed", "e3", "o2", "50", 400.5),  # outside 365 days
        _order("order_cancelled", "e4", "o3", "0", 3.5),  # before its order
        _order("order_placed", "e5", "o3", "70", 3.5),
        _interaction("e6", "add_to_cart", 2.5),
        _interaction("e7", "page_view", 10.5),
    ]
    phases = {model.sha(v): 0 for v in records}
    located = [("t", 0, i, v) for i, v in enumerate(records)]
    got = model.expected_state(located, phases, {}, NOW, CURRENCY_RATES, "v2")
    a = got.aggregates["c1"]
    assert (a["order_count"], a["net_spend"], a["spend_365d"]) == (2, Decimal(140), Decimal(90))
    assert a["open_cart_at"] == NOW - timedelta(days=2.5)
    assert got.duplicates == 1
    assert got.segments["c1"] == {
        "lifecycle": "active",
        "engagement": "engaged",
        "value": "top",
        "cart": "abandoned",
    }


def test_events_before_the_last_erasure_are_gone() -> None:
    before = _order("order_placed", "e1", "o1", "100", 5.5)
    after = _interaction("e2", "login", 1.5)
    phases = {model.sha(before): 0, model.sha(after): 1}
    located = [("t", 0, 0, before), ("t", 1, 0, after)]
    got = model.expected_state(located, phases, {"c1": 1}, NOW, CURRENCY_RATES, "v1")
    assert got.aggregates["c1"]["order_count"] == 0
    assert got.segments["c1"]["lifecycle"] == "prospect"
    assert got.erased_events == 1


def _change(cid: str, seq: int, to: str, reason: str = "r") -> tuple[str, dict[str, Any]]:
    data = {
        "customer_id": cid,
        "dimension": "lifecycle",
        "from_segment": None,
        "to_segment": to,
        "reason": reason,
        "definition_version": 1,
        "caused_by_event_time": None,
        "sequence": seq,
    }
    return f"id-{cid}-{seq}", data


def _row(change_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "change_id": change_id,
        "customer_id": data["customer_id"],
        "dimension": data["dimension"],
        "from_segment": data["from_segment"],
        "to_segment": data["to_segment"],
        "reason": data["reason"],
        "definition_version": data["definition_version"],
        "caused_by_event_at": None,
        "sequence": data["sequence"],
    }


def test_change_topic_checks() -> None:
    first, second = _change("c1", 1, "new"), _change("c1", 2, "active")
    second = (second[0], {**second[1], "from_segment": "new"})
    reused = (first[0], {**first[1], "reason": "other"})
    missing = _change("c2", 1, "new")

    def record(offset: int, change: tuple[str, dict[str, Any]]) -> tuple[int, int, bytes]:
        return (0, offset, json.dumps({"id": change[0], "data": change[1]}).encode())

    published = [record(0, second), record(1, first), record(2, first), record(3, reused)]
    history = [_row(*first), _row(*second), _row(*missing)]
    findings = checker.Findings()
    checker.compare_changes(findings, history, published, set())
    assert dict(findings.counts) == {
        "change_id_reused": 1,
        "history_row_not_published": 1,
        "change_order_violated": 1,
    }
