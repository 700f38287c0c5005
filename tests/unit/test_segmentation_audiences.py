"""Audiences: loading (references, types, cycles), evaluation after the dimensions, the
next-change search, what changes between versions, and the preview's tally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.segmenter.transitions import Transitions
from shared.segmentation import (
    Assignment,
    CustomerFacts,
    DefinitionError,
    Definitions,
    Evaluation,
    OrderFact,
    PopulationStats,
    build_facts,
    default_definitions,
    evaluate,
    load_definitions,
)
from shared.segmentation.audiences import MEMBER
from shared.segmentation.changes import changed_dimensions, diff_definitions
from shared.segmentation.facts import Interaction

NOW = datetime(2024, 6, 1, tzinfo=UTC)
EMPTY = PopulationStats()
MICROSECOND = timedelta(microseconds=1)
DEFAULTS = default_definitions().source

AUDIENCES = (
    DEFAULTS
    + """
audiences:
  lapsing_buyers:
    when: lifecycle = at_risk or lifecycle = churned
    description: Bought, then went quiet.
  lapsing_big_spenders: lapsing_buyers and net_spend_total >= 100
  repeat_buyers: orders_total >= 2
  browsing_not_buying: has_interacted and not has_ordered
  rfm_best: rfm in [champions, loyal]
"""
)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def customer(
    orders: Sequence[tuple[float, str]] = (), interactions: Sequence[float] = ()
) -> CustomerFacts:
    return build_facts(
        "c-1",
        NOW,
        [OrderFact(ago(age), Decimal(amount)) for age, amount in orders],
        [Interaction(ago(age)) for age in interactions],
    )


def problems(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text)
    return [str(problem) for problem in caught.value.problems]


def members(result: Evaluation) -> set[str]:
    return {name for name, decision in result.audiences.items() if decision.member}


# Loading ------------------------------------------------------------------------------------
def test_audiences_load_in_dependency_order_with_their_references() -> None:
    definitions = load_definitions(AUDIENCES)
    names = [a.name for a in definitions.audiences]
    assert names.index("lapsing_buyers") < names.index("lapsing_big_spenders")
    big = definitions.audience("lapsing_big_spenders")
    assert (big.dimensions, big.audiences, big.metrics) == (
        frozenset(),
        frozenset({"lapsing_buyers"}),
        frozenset({"net_spend_total"}),
    )
    assert definitions.audience("lapsing_buyers").dimensions == {"lifecycle"}
    assert definitions.audience("lapsing_buyers").description == "Bought, then went quiet."
    # Audiences' metrics are referenced metrics (they decide which facts are read).
    assert "net_spend_total" in definitions.referenced_metrics
    assert "lifecycle" not in definitions.referenced_metrics


def test_an_audience_read_before_its_definition_is_evaluated_after_it() -> None:
    definitions = load_definitions(
        DEFAULTS + "audiences:\n  first: second and has_ordered\n  second: orders_total >= 2\n"
    )
    assert [a.name for a in definitions.audiences] == ["second", "first"]


@pytest.mark.parametrize(
    ("audiences", "expected"),
    [
        (
            "  a: b and has_ordered\n  b: c\n  c: a or orders_total > 3\n",
            "audience a: audiences reference each other in a cycle: a -> b -> c -> a",
        ),
        ("  a: a and has_ordered\n", "audience a: audience 'a' references itself"),
        (
            "  a: value_tier = vipp\n",
            "audience a: column 14 of 'value_tier = vipp': 'vipp' is not a segment of "
            "value_tier (did you mean 'vip'?)",
        ),
        (
            "  a: rfm in [champions, loyl]\n",
            "audience a: column 20 of 'rfm in [champions, loyl]': 'loyl' is not a segment of "
            "rfm (did you mean 'loyal'?)",
        ),
        (
            "  a: lifecycel = new\n",
            "audience a: column 1 of 'lifecycel = new': unknown metric 'lifecycel' "
            "(did you mean 'lifecycle'?)",
        ),
        (
            "  a: lifecycle\n",
            "audience a: column 1 of 'lifecycle': lifecycle is a segment of lifecycle, not "
            "true/false; compare it, e.g. lifecycle = <segment>",
        ),
        (
            "  a: value_tier >= vip\n",
            "audience a: column 1 of 'value_tier >= vip': value_tier is a segment of "
            "value_tier; use = or != instead of >=",
        ),
        ("  lifecycle: has_ordered\n", "audience lifecycle: 'lifecycle' is already the name"),
        ("  orders_total: has_ordered\n", "audience orders_total: 'orders_total' is already"),
        ("  vip_spend: has_ordered\n", "audience vip_spend: 'vip_spend' is already the name"),
        (
            "  a: previous = new\n",
            "audience a: column 1 of 'previous = new': unknown metric 'previous'",
        ),
        ("  a: {when: has_ordered, because: x}\n", "audience a: unknown key 'because'"),
        ("  a: 3\n", "audience a: the condition must be a string, got 3"),
    ],
)
def test_invalid_audiences_are_rejected_naming_the_problem(audiences: str, expected: str) -> None:
    found = problems(DEFAULTS + "audiences:\n" + audiences)
    assert any(problem.startswith(expected) for problem in found), found


def test_a_cycle_is_reported_once_with_every_problem_else() -> None:
    found = problems(DEFAULTS + "audiences:\n  a: b\n  b: a\n  c: d\n  d: c and e\n  e: x > 1\n")
    cycles = [p for p in found if "cycle" in p]
    assert cycles == [
        "audience a: audiences reference each other in a cycle: a -> b -> a",
        "audience c: audiences reference each other in a cycle: c -> d -> c",
    ]
    assert any("unknown metric 'x'" in p for p in found)


def test_a_duplicated_audience_is_named_with_both_lines() -> None:
    found = problems(DEFAULTS + "audiences:\n  a: has_ordered\n  a: has_interacted\n")
    assert any(p.startswith("audience a: duplicate audience name (lines") for p in found), found


def test_a_dimension_named_like_a_metric_is_refused_once_audiences_read_dimensions() -> None:
    text = """
dimensions:
  orders_total:
    segments:
      some: has_ordered
      none: not has_ordered
"""
    load_definitions(text)  # without audiences, as before
    found = problems(text + "audiences:\n  a: has_ordered\n")
    assert any(p.startswith("orders_total: 'orders_total' is the name of a metric") for p in found)


# Evaluation -----------------------------------------------------------------------------------
def test_a_customer_is_in_any_number_of_audiences() -> None:
    definitions = load_definitions(AUDIENCES)
    facts = customer(orders=[(120, "80"), (100, "50")])
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert result.assignments["lifecycle"].segment == "at_risk"
    assert members(result) == {"lapsing_buyers", "lapsing_big_spenders", "repeat_buyers"}
    decision = result.audiences["lapsing_big_spenders"]
    assert (decision.changed, decision.since, decision.was_member) == (True, NOW, False)
    assert decision.reason == "lapsing_buyers=true and net_spend_total=130 >= 100"
    assert result.audiences["lapsing_buyers"].reason == "lifecycle=at_risk = at_risk"
    out = result.audiences["browsing_not_buying"]
    assert (out.member, out.changed, out.since) == (False, False, None)
    assert out.reason == "has_interacted=false and has_ordered=true"
    assert result.current["lapsing_buyers"] == Assignment(MEMBER, NOW)
    assert "browsing_not_buying" not in result.current


def test_an_audience_follows_a_dimensions_change_in_the_same_evaluation() -> None:
    definitions = load_definitions(AUDIENCES)
    earlier = NOW - timedelta(days=10)
    previous = {"lifecycle": Assignment("active", earlier)}
    # The last order turned 90 days old since the previous evaluation: at_risk now.
    result = evaluate(definitions, customer(orders=[(95, "20")]), NOW, previous, EMPTY)
    assert result.assignments["lifecycle"].changed
    assert result.assignments["lifecycle"].segment == "at_risk"
    lapsing = result.audiences["lapsing_buyers"]
    assert (lapsing.member, lapsing.changed, lapsing.since) == (True, True, NOW)


def test_membership_keeps_its_since_and_an_exit_says_why() -> None:
    definitions = load_definitions(AUDIENCES)
    entered = NOW - timedelta(days=3)
    previous = {
        "lifecycle": Assignment("at_risk", entered),
        "lapsing_buyers": Assignment(MEMBER, entered),
        "repeat_buyers": Assignment(MEMBER, entered),
    }
    # Ordered again: lifecycle leaves at_risk (reactivated), the audience exits with it.
    facts = customer(orders=[(100, "20"), (1, "20")])
    result = evaluate(definitions, facts, NOW, previous, EMPTY)
    assert result.assignments["lifecycle"].segment == "reactivated"
    lapsing = result.audiences["lapsing_buyers"]
    assert (lapsing.member, lapsing.changed, lapsing.since, lapsing.was_member) == (
        False,
        True,
        None,
        True,
    )
    assert lapsing.reason == (
        "not (lifecycle=reactivated = at_risk) and not (lifecycle=reactivated = churned)"
    )
    repeat = result.audiences["repeat_buyers"]
    assert (repeat.member, repeat.changed, repeat.since) == (True, False, entered)


# Next change ---------------------------------------------------------------------------------
QUIET_DIMENSION = """
dimensions:
  buyer:
    segments:
      buyer: has_ordered
      prospect: not has_ordered
"""


def assert_exact(definitions: Definitions, facts: CustomerFacts, result: Evaluation) -> None:
    """Nothing changes at next_change_at - 1µs; something does at next_change_at."""
    at = result.next_change_at
    assert at is not None
    current = result.current
    before = evaluate(definitions, facts, at - MICROSECOND, current, EMPTY)
    assert not any(d.changed for d in before.assignments.values())
    assert not any(a.changed for a in before.audiences.values())
    after = evaluate(definitions, facts, at, current, EMPTY, find_next_change=False)
    changed = [d for d in after.assignments.values() if d.changed]
    assert changed or any(a.changed for a in after.audiences.values())


def test_next_change_is_when_an_audiences_own_metric_crosses_its_threshold() -> None:
    definitions = load_definitions(
        QUIET_DIMENSION + "audiences:\n  lapsing: days_since_last_order >= 45.5\n"
    )
    facts = customer(orders=[(10, "20")])
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert not result.audiences["lapsing"].member
    assert result.next_change_at == ago(10) + timedelta(days=45.5)
    assert_exact(definitions, facts, result)


def test_next_change_is_when_an_order_leaving_a_window_ends_a_membership() -> None:
    definitions = load_definitions(QUIET_DIMENSION + "audiences:\n  frequent: orders_30d >= 2\n")
    facts = customer(orders=[(20, "5"), (5, "5"), (40, "5")])
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert result.audiences["frequent"].member
    assert result.next_change_at == ago(20) + timedelta(days=30)
    assert_exact(definitions, facts, result)


def test_next_change_of_an_audience_reading_an_audience_whose_metric_crosses() -> None:
    text = QUIET_DIMENSION + (
        "audiences:\n"
        "  quiet_big: quiet and net_spend_total >= 100\n"
        "  quiet: days_since_last_interaction >= 7\n"
    )
    definitions = load_definitions(text)
    facts = customer(orders=[(3, "150")], interactions=[2])
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert members(result) == set()
    assert result.next_change_at == ago(2) + timedelta(days=7)
    later = evaluate(definitions, facts, result.next_change_at, result.current, EMPTY)
    assert members(later) == {"quiet", "quiet_big"}
    assert all(a.changed for a in later.audiences.values())


def test_an_audience_on_a_dimension_changes_when_the_dimension_does() -> None:
    definitions = load_definitions(AUDIENCES)
    facts = customer(orders=[(60, "20")])
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert result.assignments["lifecycle"].segment == "active"
    assert result.next_change_at == ago(60) + timedelta(days=90)
    later = evaluate(definitions, facts, result.next_change_at, result.current, EMPTY)
    assert later.audiences["lapsing_buyers"].changed


def test_an_audience_threshold_that_never_flips_membership_does_not_wake_anyone() -> None:
    # The metric crosses 45 days, but `has_ordered` keeps the audience false: no change.
    text = (
        QUIET_DIMENSION + "audiences:\n  never: days_since_last_order >= 45 and not has_ordered\n"
    )
    definitions = load_definitions(text)
    result = evaluate(definitions, customer(orders=[(10, "20")]), NOW, {}, EMPTY)
    assert result.next_change_at is None


@settings(max_examples=60, deadline=None)
@given(
    orders=st.lists(st.tuples(st.floats(0, 400), st.sampled_from(["5", "40", "120"])), max_size=4),
    interactions=st.lists(st.floats(0, 40), max_size=4),
)
def test_next_change_with_audiences_is_exact(
    orders: list[tuple[float, str]], interactions: list[float]
) -> None:
    definitions = load_definitions(
        AUDIENCES
        + "  recent_browser: days_since_last_interaction < 3.25\n"
        + "  monthly: orders_30d >= 1 and not lapsing_buyers\n"
    )
    facts = customer(orders, interactions)
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    # Settled: evaluating again at the same instant changes nothing.
    again = evaluate(definitions, facts, NOW, result.current, EMPTY)
    assert not any(a.changed for a in again.audiences.values())
    if result.next_change_at is not None:
        assert_exact(definitions, facts, result)


# What changes between versions ---------------------------------------------------------------
def test_changed_dimensions_knows_audiences_and_what_they_read() -> None:
    base = load_definitions(AUDIENCES)
    assert changed_dimensions(base, base) == ()
    assert set(changed_dimensions(None, base)) >= {"lifecycle", "lapsing_buyers"}
    # A changed dimension that an audience reads (through another audience, too) changes
    # the audiences as well; those that read neither stay.
    engaged = base.source.replace(
        "days_since_last_order < 180", "days_since_last_order < 200"
    ).replace("days_since_last_order >= 180", "days_since_last_order >= 200")
    assert engaged != base.source
    changed = changed_dimensions(base, load_definitions(engaged))
    assert set(changed) == {"lifecycle", "lapsing_buyers", "lapsing_big_spenders"}
    # An audience whose condition changes, one removed, one added.
    edited = AUDIENCES.replace("orders_total >= 2", "orders_total >= 3").replace(
        "  rfm_best: rfm in [champions, loyal]\n", "  newcomers: lifecycle = new\n"
    )
    assert set(changed_dimensions(base, load_definitions(edited))) == {
        "repeat_buyers",
        "newcomers",
        "rfm_best",
    }


def test_the_diff_lists_audiences() -> None:
    base = load_definitions(AUDIENCES)
    edited = load_definitions(AUDIENCES.replace("orders_total >= 2", "orders_total >= 3"))
    diff = diff_definitions(base, edited)
    assert not diff.is_empty
    changed = [a for a in diff.audiences if a.status != "unchanged"]
    assert [(a.name, a.status, a.old_condition, a.new_condition) for a in changed] == [
        ("repeat_buyers", "changed", "orders_total >= 2", "orders_total >= 3")
    ]
    assert diff_definitions(base, base).is_empty


# The preview's tally --------------------------------------------------------------------------
def test_the_preview_counts_entries_exits_and_sizes_per_audience() -> None:
    base = load_definitions(DEFAULTS + "audiences:\n  repeat_buyers: orders_total >= 2\n")
    candidate = load_definitions(
        DEFAULTS + "audiences:\n  repeat_buyers: orders_total >= 3\n  buyers: has_ordered\n"
    )
    transitions = Transitions(base, candidate, samples=5)
    since = NOW - timedelta(days=1)
    for cid, orders, stored in (
        ("a", 2, {"repeat_buyers": Assignment(MEMBER, since)}),  # exits
        ("b", 3, {"repeat_buyers": Assignment(MEMBER, since)}),  # stays
        ("c", 0, {}),  # stays out
    ):
        facts = build_facts(cid, NOW, [OrderFact(ago(5 + i), Decimal(10)) for i in range(orders)])
        current = {**stored}
        transitions.add(cid, current, evaluate(candidate, facts, NOW, current, EMPTY))
    tally = {entry["name"]: entry for entry in transitions.audiences()}
    repeat = tally["repeat_buyers"]
    assert repeat["status"] == "changed"
    assert repeat["segments"] == [{"name": MEMBER, "now": 2, "candidate": 1}]
    moves = {(t["from"], t["to"]): t for t in repeat["transitions"]}
    assert set(moves) == {(MEMBER, None), (MEMBER, MEMBER)}
    assert moves[MEMBER, None]["samples"] == [
        {"customer_id": "a", "reason": "not (orders_total=2 >= 3)"}
    ]
    buyers = tally["buyers"]
    assert buyers["status"] == "added"
    assert buyers["segments"] == [{"name": MEMBER, "now": 0, "candidate": 2}]
    assert [d["name"] for d in transitions.dimensions()] == [d.name for d in candidate.dimensions]


def test_long_chains_and_shared_references_load_and_compare_quickly() -> None:
    # Deeper than Python's recursion, and references shared by many (a fingerprint that
    # nested its references' would grow as the Fibonacci numbers here).
    chain = "".join(f"  c{i}: c{i + 1} and has_ordered\n" for i in range(2000))
    diamond = "".join(f"  d{i}: d{i + 1} or d{i + 2}\n" for i in range(60))
    tail = "  c2000: lifecycle = new\n  d60: lifecycle = active\n  d61: has_interacted\n"
    base = load_definitions(DEFAULTS + "audiences:\n" + chain + diamond + tail)
    names = [a.name for a in base.audiences]
    assert names.index("c2000") < names.index("c0")
    assert names.index("d61") < names.index("d0")
    edited = load_definitions(
        DEFAULTS + "audiences:\n" + chain + diamond + tail.replace("has_interacted", "has_ordered")
    )
    changed = changed_dimensions(base, edited)
    assert set(changed) == {f"d{i}" for i in range(62)} - {"d60"}
    facts = customer(orders=[(5, "20")])
    result = evaluate(base, facts, NOW, {}, EMPTY)
    assert result.audiences["c0"].member
    assert result.audiences["d0"].member is False


def test_audiences_read_traits_and_declared_metrics_with_exact_next_changes() -> None:
    text = (
        DEFAULTS.replace(
            "cutoffs:", "metrics:\n  clicks_14d: {count: email_click, within: 14d}\ncutoffs:", 1
        )
        + "audiences:\n"
        + "  dach_buyers: country in [DE, AT] and lifecycle != prospect\n"
        + "  clickers: clicks_14d >= 2\n"
    )
    definitions = load_definitions(text)
    assert definitions.audience("clickers").metrics == {"clicks_14d"}
    facts = build_facts(
        "c-1",
        NOW,
        [OrderFact(ago(3), Decimal(10))],
        [Interaction(ago(10), "email_click"), Interaction(ago(1), "email_click")],
        metrics=definitions.event_metrics.values(),
        traits={"country": "AT"},
    )
    result = evaluate(definitions, facts, NOW, {}, EMPTY)
    assert members(result) == {"dach_buyers", "clickers"}
    # The click 10 days ago leaves the 14-day window in 4 days: the audience exits then.
    assert result.next_change_at == ago(10) + timedelta(days=14)
    assert_exact(definitions, facts, result)
    found = problems(text.replace("[DE, AT]", "[DE, AT] and clicks_14d = vip"))
    assert any("clicks_14d is a count, but 'vip' is neither a number" in p for p in found), found
