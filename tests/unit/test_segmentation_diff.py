"""The structural diff between two definitions: each kind of edit is reported where it was
made, and `reevaluated` agrees with `changed_dimensions` (what an activation re-evaluates)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.segmentation import default_definitions, load_definitions
from shared.segmentation.changes import DefinitionsDiff, changed_dimensions, diff_definitions

BASE = """
description: base
cutoffs:
  big: {metric: spend_365d, value: 100}
scores:
  f_score: {metric: orders_365d, buckets: 5, better: higher}
dimensions:
  value:
    description: spend
    segments:
      big_spender: spend_365d >= big
      small_spender: spend_365d < big
  engagement:
    let:
      recent: days_since_last_interaction < 7
    segments:
      engaged:
        when: recent
        description: seen this week
      casual: days_since_last_interaction >= 7 and days_since_last_interaction < 30
      dormant: days_since_last_interaction >= 30
      none: days_since_last_interaction is null
  frequency:
    segments:
      frequent: f_score >= 3
      rare: f_score < 3
      none: f_score is null
"""


def diff(edited: str, base: str = BASE) -> DefinitionsDiff:
    old, new = load_definitions(base), load_definitions(edited)
    result = diff_definitions(old, new)
    # The diff's notion of "re-evaluated" is the activation's, whatever the edit.
    assert {d.name for d in result.dimensions if d.reevaluated} == set(changed_dimensions(old, new))
    return result


def statuses(result: DefinitionsDiff) -> dict[str, str]:
    return {d.name: d.status for d in result.dimensions}


def test_formatting_and_comments_are_no_difference() -> None:
    spaced = BASE.replace("spend_365d >= big", "spend_365d   >=   big  # vip")
    result = diff(spaced)
    assert result.is_empty
    assert statuses(result) == dict.fromkeys(("value", "engagement", "frequency"), "unchanged")


def test_a_changed_condition_names_its_segment_with_both_sources() -> None:
    edited = BASE.replace(
        "casual: days_since_last_interaction >= 7 and",
        "casual: days_since_last_interaction >= 8 and",
    ).replace("days_since_last_interaction < 7", "days_since_last_interaction < 8")
    result = diff(edited)
    engagement = next(d for d in result.dimensions if d.name == "engagement")
    assert (engagement.status, engagement.reevaluated) == ("changed", True)
    assert [(s.name, s.status) for s in engagement.segments] == [
        ("engaged", "changed"),  # its let changed: the condition differs, the text does not
        ("casual", "changed"),
    ]
    assert engagement.segments[1].old_condition == (
        "days_since_last_interaction >= 7 and days_since_last_interaction < 30"
    )
    assert engagement.segments[1].new_condition == (
        "days_since_last_interaction >= 8 and days_since_last_interaction < 30"
    )
    assert [(c.name, c.status, c.old, c.new) for c in engagement.lets] == [
        (
            "recent",
            "changed",
            "days_since_last_interaction < 7",
            "days_since_last_interaction < 8",
        )
    ]
    assert statuses(result) == {
        "value": "unchanged",
        "engagement": "changed",
        "frequency": "unchanged",
    }


def test_a_description_alone_changes_nothing_that_is_evaluated() -> None:
    result = diff(BASE.replace("seen this week", "seen in the last 7 days").replace("base", "v2"))
    engagement = next(d for d in result.dimensions if d.name == "engagement")
    assert (engagement.status, engagement.reevaluated) == ("changed", False)
    (segment,) = engagement.segments
    assert (segment.name, segment.old_description, segment.new_description) == (
        "engaged",
        "seen this week",
        "seen in the last 7 days",
    )
    assert segment.old_condition == segment.new_condition == "recent"
    assert (result.old_description, result.new_description) == ("base", "v2")
    assert not result.is_empty


def test_dimensions_added_and_removed_list_their_segments() -> None:
    without_value = BASE.replace(
        "  value:\n    description: spend\n    segments:\n"
        "      big_spender: spend_365d >= big\n      small_spender: spend_365d < big\n",
        "",
    )
    result = diff(without_value)
    assert statuses(result) == {
        "engagement": "unchanged",
        "frequency": "unchanged",
        "value": "removed",
    }
    removed = result.dimensions[-1]
    assert removed.reevaluated
    assert [(s.name, s.status, s.old_condition, s.new_condition) for s in removed.segments] == [
        ("big_spender", "removed", "spend_365d >= big", None),
        ("small_spender", "removed", "spend_365d < big", None),
    ]
    added = diff(BASE, base=without_value)
    assert statuses(added)["value"] == "added"
    assert [d.name for d in added.dimensions] == ["value", "engagement", "frequency"]


def test_a_renamed_segment_is_one_removed_and_one_added() -> None:
    result = diff(BASE.replace("rare:", "occasional:"))
    frequency = next(d for d in result.dimensions if d.name == "frequency")
    assert [(s.name, s.status) for s in frequency.segments] == [
        ("occasional", "added"),
        ("rare", "removed"),
    ]
    assert not frequency.order_changed


def test_rule_order_is_a_difference() -> None:
    swapped = BASE.replace(
        "      frequent: f_score >= 3\n      rare: f_score < 3\n",
        "      rare: f_score < 3\n      frequent: f_score >= 3\n",
    )
    frequency = next(d for d in diff(swapped).dimensions if d.name == "frequency")
    assert (frequency.status, frequency.reevaluated, frequency.order_changed) == (
        "changed",
        True,
        True,
    )
    assert frequency.segments == ()


@pytest.mark.parametrize(
    ("edited", "kind", "dimension"),
    [
        (BASE.replace("value: 100", "value: 150"), "cutoffs", "value"),
        (BASE.replace("buckets: 5", "buckets: 4"), "scores", "frequency"),
    ],
)
def test_a_changed_cutoff_or_score_moves_the_dimensions_that_read_it(
    edited: str, kind: str, dimension: str
) -> None:
    result = diff(edited)
    changes = getattr(result, kind)
    assert [(c.name, c.status) for c in changes] == [
        ("big" if kind == "cutoffs" else "f_score", "changed")
    ]
    moved = next(d for d in result.dimensions if d.name == dimension)
    assert (moved.status, moved.reevaluated, moved.segments) == ("changed", True, ())
    assert moved.inputs_changed == (changes[0].name,)
    assert [d.name for d in result.dimensions if d.status == "changed"] == [dimension]


def test_cutoffs_added_and_removed_carry_their_specs() -> None:
    edited = BASE.replace(
        "  big: {metric: spend_365d, value: 100}\n",
        "  big: {metric: spend_365d, value: 100}\n  top: {metric: spend_365d, top_percent: 5}\n",
    )
    (added,) = diff(edited).cutoffs
    assert (added.name, added.status, added.old) == ("top", "added", None)
    assert added.new is not None
    assert added.new.top_percent == Decimal(5)
    (removed,) = diff(BASE, base=edited).cutoffs
    assert (removed.name, removed.status, removed.new) == ("top", "removed", None)


def test_default_against_itself_is_empty() -> None:
    assert diff_definitions(default_definitions(), default_definitions()).is_empty
