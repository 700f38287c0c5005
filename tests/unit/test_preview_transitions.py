"""The preview's tally (services/segmenter/transitions.py): sizes, cells, samples, order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from services.segmenter.transitions import Transitions
from shared.segmentation import (
    Assignment,
    Interaction,
    PopulationStats,
    build_facts,
    evaluate,
    load_definitions,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
BASE = load_definitions("""
description: base
dimensions:
  engagement:
    segments:
      engaged: days_since_last_interaction < 7
      casual:  days_since_last_interaction >= 7
      none:    days_since_last_interaction is null
  old:
    segments:
      anyone: interactions_total >= 0
""")
CANDIDATE = load_definitions("""
description: candidate
dimensions:
  seen:
    segments:
      seen:   has_interacted
      unseen: not has_interacted
  engagement:
    segments:
      engaged: days_since_last_interaction < 3
      casual:  days_since_last_interaction >= 3
      none:    days_since_last_interaction is null
""")


def tally(
    customers: Sequence[tuple[str, float | None, dict[str, str]]], samples: int
) -> Transitions:
    """Customers as (id, days since their last interaction, stored segments)."""
    out = Transitions(BASE, CANDIDATE, samples)
    for cid, days, stored in customers:
        interactions = [] if days is None else [Interaction(NOW - timedelta(days=days))]
        current = {d: Assignment(s, NOW - timedelta(days=40)) for d, s in stored.items()}
        facts = build_facts(cid, NOW, interactions=interactions)
        result = evaluate(CANDIDATE, facts, NOW, current, PopulationStats(), find_next_change=False)
        out.add(cid, current, result)
    return out


ENGAGED = {"engagement": "engaged", "old": "anyone"}


def test_dimensions_come_in_candidate_order_then_the_removed_with_every_segment() -> None:
    result = tally(
        [
            ("c1", 5.0, ENGAGED),
            ("c2", 1.0, ENGAGED),
            ("c3", None, {"engagement": "none", "old": "anyone", "legacy": "x"}),
            ("c4", 5.0, {}),  # never evaluated: no segment to move from
        ],
        samples=5,
    ).dimensions()
    assert [(d["name"], d["status"]) for d in result] == [
        ("seen", "added"),
        ("engagement", "changed"),
        ("old", "removed"),
        ("legacy", "removed"),  # stored under some older version, in neither file
    ]
    engagement = result[1]
    assert engagement["segments"] == [
        {"name": "engaged", "now": 2, "candidate": 1},
        {"name": "casual", "now": 0, "candidate": 2},
        {"name": "none", "now": 1, "candidate": 1},
    ]
    assert [(t["from"], t["to"], t["customers"]) for t in engagement["transitions"]] == [
        (None, "casual", 1),
        ("engaged", "engaged", 1),
        ("engaged", "casual", 1),
        ("none", "none", 1),
    ]
    assert [(t["from"], t["to"], t["customers"]) for t in result[2]["transitions"]] == [
        ("anyone", None, 3)
    ]
    assert result[2]["segments"] == [{"name": "anyone", "now": 3, "candidate": 0}]
    assert result[2]["transitions"][0]["samples"][0] == {
        "customer_id": "c1",
        "reason": "dimension 'old' is not in the candidate definitions",
    }


def test_samples_are_the_first_customers_of_each_moved_cell_with_the_candidates_reason() -> None:
    customers = [(f"c{i}", 5.0, ENGAGED) for i in range(5)] + [("d0", 1.0, ENGAGED)]
    result = tally(customers, samples=2).dimensions()
    cells = {(t["from"], t["to"]): t for t in result[1]["transitions"]}
    moved = cells["engaged", "casual"]
    assert moved["customers"] == 5
    assert [s["customer_id"] for s in moved["samples"]] == ["c0", "c1"]
    assert moved["samples"][0]["reason"] == "days_since_last_interaction=5 >= 3"
    assert cells["engaged", "engaged"]["samples"] == []


def test_an_uncovered_customer_keeps_its_segments_and_is_only_counted() -> None:
    transitions = Transitions(BASE, CANDIDATE, 3)
    transitions.add("c1", {"engagement": Assignment("engaged", NOW)}, None)
    assert (transitions.customers, transitions.uncovered) == (1, 1)
    engagement = transitions.dimensions()[1]
    assert engagement["transitions"] == []
    assert engagement["segments"][0] == {"name": "engaged", "now": 1, "candidate": 0}
