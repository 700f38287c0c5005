"""Cut-offs resolved by population stats, and rule conditions rendered with their values."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.segmentation import PopulationStats, default_definitions, load_definitions
from shared.segmentation.metrics import Number
from shared.segmentation.parser import tokenize
from shared.segmentation.resolution import (
    cutoff_values,
    describe_cutoff,
    exact,
    resolve_condition,
)

# `spend` is a cut-off whose name is part of a metric's; `big` is also a segment's name.
DEFINITIONS = load_definitions("""
cutoffs:
  big: {metric: spend_365d, value: 100}
  spend: {metric: spend_365d, top_percent: 10}
  long_ago: {metric: days_since_last_order, value: 90}
  plain: {value: 3}
dimensions:
  tier:
    segments:
      big: spend_365d >= big or previous = big and spend_365d > 50
      small: not (spend_365d >= big or previous in [big] and spend_365d > 50)
  top:
    segments:
      top: spend_365d >= spend
      rest: not ( spend_365d>=spend )
  recency:
    let:
      lapsed: days_since_last_order >= long_ago
    segments:
      lapsed: lapsed
      recent: days_since_last_order < long_ago
      none: days_since_last_order is null
  orders:
    segments:
      many: orders_365d >= plain and spend_365d >= spend
      few: orders_365d < plain or spend_365d < spend
""")
RESOLVED = PopulationStats(cutoffs={"spend": Decimal("428.2800")})


def _rendered(dimension: str, segment: str, population: PopulationStats | None) -> str:
    rule = next(r for r in DEFINITIONS.dimension(dimension).rules if r.name == segment)
    return resolve_condition(rule.source, rule.condition, cutoff_values(DEFINITIONS, population))


@pytest.mark.parametrize(
    ("dimension", "segment", "population", "expected"),
    [
        ("top", "top", RESOLVED, "spend_365d >= 428.28"),
        ("top", "top", None, "spend_365d >= spend (unresolved)"),
        ("top", "top", PopulationStats(), "spend_365d >= spend (unresolved)"),
        # Spacing and parentheses as written (after the loader's whitespace folding).
        ("top", "rest", RESOLVED, "not ( spend_365d>=428.28 )"),
        # An absolute cut-off is its value, with or without population stats; the segment
        # `big` after `previous`, in a comparison or a list, keeps its name.
        (
            "tier",
            "big",
            None,
            "spend_365d >= 100 or previous = big and spend_365d > 50",
        ),
        (
            "tier",
            "small",
            RESOLVED,
            "not (spend_365d >= 100 or previous in [big] and spend_365d > 50)",
        ),
        # A days cut-off is a float; a let is shown by its name, its body is not in the rule.
        ("recency", "recent", None, "days_since_last_order < 90"),
        ("recency", "lapsed", None, "lapsed"),
        ("recency", "none", None, "days_since_last_order is null"),
        # A cut-off without a metric, next to an unresolved one.
        ("orders", "many", None, "orders_365d >= 3 and spend_365d >= spend (unresolved)"),
        ("orders", "few", RESOLVED, "orders_365d < 3 or spend_365d < 428.28"),
    ],
)
def test_resolved_conditions(
    dimension: str, segment: str, population: PopulationStats | None, expected: str
) -> None:
    assert _rendered(dimension, segment, population) == expected


def test_cutoff_values_are_absolute_resolved_or_none() -> None:
    assert cutoff_values(DEFINITIONS, RESOLVED) == {
        "big": Decimal(100),
        "spend": Decimal("428.2800"),
        "long_ago": 90.0,
        "plain": Decimal(3),
    }
    assert cutoff_values(DEFINITIONS, None)["spend"] is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("428.2800"), "428.28"),
        (Decimal("428.285"), "428.285"),  # not rounded to 428.28 or 428.29
        (Decimal("1000.0000"), "1000"),  # not 1E+3
        (Decimal("0.0000"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("0.00001"), "0.00001"),
        (90.0, "90"),
        (12.25, "12.25"),
        (7, "7"),
    ],
)
def test_numbers_keep_every_digit(value: Number, text: str) -> None:
    assert exact(value) == text


def test_cutoffs_described_as_the_comparison_they_stand_for() -> None:
    spend, plain = DEFINITIONS.cutoffs["spend"], DEFINITIONS.cutoffs["plain"]
    assert describe_cutoff(spend, Decimal("428.2800")) == "spend_365d >= 428.28"
    assert describe_cutoff(spend, None) == "spend_365d >= spend (unresolved)"
    assert describe_cutoff(plain, Decimal(3)) == "3"


@given(
    values=st.fixed_dictionaries(
        {
            name: st.one_of(
                st.none(), st.decimals(min_value=0, max_value=10**6, places=4), st.integers(0, 99)
            )
            for name in default_definitions().cutoffs
        }
    )
)
def test_only_cutoff_names_change(values: dict[str, Number | None]) -> None:
    """Token for token, the rendering is the rule with each cut-off name replaced by a number
    (or followed by the unresolved mark): nothing else moves."""
    definitions = default_definitions()
    for dimension in definitions.dimensions:
        for rule in dimension.rules:
            before = [(t.kind, t.text) for t in tokenize(rule.source)]
            expected: list[tuple[str, str]] = []
            for kind, text in before:
                if kind == "name" and text in values:
                    value = values[text]
                    if value is None:
                        expected += [(kind, text), ("punct", "("), ("name", "unresolved")]
                        expected += [("punct", ")")]
                    else:
                        expected.append(("number", exact(value)))
                else:
                    expected.append((kind, text))
            after = resolve_condition(rule.source, rule.condition, values)
            assert [(t.kind, t.text) for t in tokenize(after)] == expected
