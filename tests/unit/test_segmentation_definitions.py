"""Loading and validating definitions: every kind of problem names its rule and says what
is wrong."""

from __future__ import annotations

import textwrap
from importlib import resources

import pytest

from shared.segmentation import DefinitionError, default_definitions, load_definitions

ENGAGEMENT = """
dimensions:
  engagement:
    segments:
      engaged: days_since_last_interaction < 7
      casual: days_since_last_interaction >= 7 and days_since_last_interaction < 30
      dormant: days_since_last_interaction >= 30
      none: days_since_last_interaction is null
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(textwrap.dedent(text))
    return [str(problem) for problem in caught.value.problems]


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def one_dimension(segments: str, extra: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(segments).strip(), " " * 6)
    return f"{extra}\ndimensions:\n  d:\n    segments:\n{body}\n"


def test_default_definitions_load() -> None:
    definitions = default_definitions()
    assert [d.name for d in definitions.dimensions] == [
        "lifecycle",
        "value_tier",
        "rfm",
        "engagement",
    ]
    assert definitions.dimension("lifecycle").segments == (
        "prospect",
        "reactivated",
        "new",
        "active",
        "at_risk",
        "churned",
    )
    assert len(definitions.dimension("rfm").segments) == 12  # the 11-cell map plus none
    assert definitions.population_metrics == {"spend_365d", "days_since_last_order", "orders_365d"}


def test_content_hash_ignores_formatting_and_comments() -> None:
    reformatted = "# a comment\n" + ENGAGEMENT.replace(": days", ":   days")
    assert load_definitions(ENGAGEMENT).content_hash == load_definitions(reformatted).content_hash
    changed = ENGAGEMENT.replace("< 7", "< 8").replace(">= 7", ">= 8")
    assert load_definitions(ENGAGEMENT).content_hash != load_definitions(changed).content_hash


def test_default_file_is_package_data() -> None:
    text = resources.files("shared.segmentation").joinpath("definitions/default.yaml").read_text()
    assert load_definitions(text).content_hash == default_definitions().content_hash


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("days_since_last_order <=", "column 25"),
        ("days_since_last_order < 30 and", "column 31"),
        ("(has_ordered", "expected ')' to close the '(' at column 1"),
        ("previous in [a", "expected ']' to close the list"),
        ("has_ordered $", "unexpected character '$'"),
        ("days_since_last_order = null", "use 'is null'"),
        ("has_ordered has_interacted", "expected 'and', 'or' or the end, found 'has_interacted'"),
        ("", "empty condition"),
    ],
)
def test_syntax_errors_give_the_position(condition: str, message: str) -> None:
    problem = only_problem(one_dimension(f"a: '{condition}'\nb: has_ordered"))
    assert problem.startswith("d/a: syntax error at column")
    assert message in problem


def test_unknown_metric_suggests_the_closest_name() -> None:
    problem = only_problem(one_dimension("a: days_since_last_ordr < 5\nb: has_ordered"))
    assert problem == (
        "d/a: column 1 of 'days_since_last_ordr < 5': unknown metric 'days_since_last_ordr' "
        "(did you mean 'days_since_last_order'?)"
    )


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            "days_since_last_order < at_risk",
            "type mismatch: days_since_last_order is a number of days, "
            "but 'at_risk' is neither a number nor a cut-off",
        ),
        ("previous = 5", "type mismatch: previous is a segment of d, but 5 is a number"),
        ("previous in [a, churnd]", "'churnd' is not a segment of d"),
        ("previous < a", "previous is a segment of d; use = or != instead of <"),
        ("has_ordered = 1", "type mismatch: has_ordered is true/false, but 1 is a number"),
        ("orders_total", "orders_total is a count, not true/false; compare it"),
        ("spend_365d > true", "spend_365d is an amount, but true is true/false"),
    ],
)
def test_type_mismatches_name_the_rule(condition: str, message: str) -> None:
    problem = only_problem(one_dimension(f"a: '{condition}'\nb: has_ordered"))
    assert problem.startswith("d/a: column ")
    assert message in problem


def test_segment_typo_suggests_the_segment() -> None:
    problem = only_problem(
        one_dimension("a: previous in [b, churnd]\nb: has_ordered\nchurned: has_ordered")
    )
    assert "'churnd' is not a segment of d (did you mean 'churned'?)" in problem


def test_duplicate_segment_names_are_reported_with_lines() -> None:
    text = one_dimension("a: has_ordered\nb: not has_ordered\na: has_ordered")
    assert only_problem(text) == "d/a: duplicate segment name 'a' (lines 5 and 7)"


def test_overlapping_rules_give_a_witness() -> None:
    text = one_dimension(
        """
        recent: days_since_last_order <= 30
        old: days_since_last_order >= 30
        never: not has_ordered
        """
    )
    assert only_problem(text) == (
        "d: rules recent and old both match when days_since_last_order=30, has_ordered=true"
    )


def test_rules_that_leave_customers_out_give_a_witness() -> None:
    text = one_dimension(
        """
        recent: days_since_last_order < 30
        old: days_since_last_order > 30
        """
    )
    problems = problems_of(text)
    assert problems == ["d: no rule matches when days_since_last_order=null"]


def test_gap_at_exact_boundary_is_found() -> None:
    text = one_dimension(
        """
        recent: days_since_last_order < 30
        old: days_since_last_order > 30
        never: days_since_last_order is null
        """
    )
    assert only_problem(text) == "d: no rule matches when days_since_last_order=30"


def test_lifecycle_overlap_with_previous_names_both_rules() -> None:
    text = one_dimension(
        """
        first: days_since_first_order < 30
        back: previous in [lapsed] and days_since_last_order < 30
        steady: >
          days_since_first_order >= 30 and days_since_last_order < 90
          and not (previous in [lapsed] and days_since_last_order < 30)
        lapsed: days_since_last_order >= 90
        none: not has_ordered
        """
    )
    problem = problems_of(text)[0]
    assert problem.startswith("d: rules first and back both match when ")
    assert "previous=lapsed" in problem


def test_linked_metrics_do_not_produce_impossible_witnesses() -> None:
    # Enumerating metrics independently would report a gap at days_since_first_order=10,
    # days_since_last_order=40 and an overlap at orders_30d=3, orders_90d=0: no customer
    # can have either.
    load_definitions(
        one_dimension(
            """
            fresh: days_since_first_order < 30 and days_since_last_order < 30
            settled: days_since_first_order >= 30 and days_since_last_order < 90
            quiet: days_since_first_order >= 30 and days_since_last_order >= 90
            never: not has_ordered
            """
        )
    )
    load_definitions(
        one_dimension(
            """
            busy: orders_30d >= 3
            some: orders_30d < 3 and orders_90d >= 1
            none: orders_90d = 0
            """
        )
    )


def test_states_that_do_not_hold_when_entered_are_reported() -> None:
    text = one_dimension(
        """
        a: previous is null or previous = b
        b: previous = a
        """
    )
    problems = problems_of(text)
    assert problems[0] == (
        "d: rule a matches when previous=null, but once in a (days_in_segment=0) rule b "
        "matches at the same instant; a segment must hold when it is entered"
    )


def test_cutoff_scenarios_catch_rules_that_need_distinct_cutoffs() -> None:
    cutoffs = """
    cutoffs:
      top: {metric: spend_365d, top_percent: 10}
      mid: {metric: spend_365d, top_percent: 50}
    """
    text = one_dimension(
        """
        top: spend_365d >= top
        mid: spend_365d >= mid and spend_365d < top
        low: spend_365d < mid and spend_365d > 0
        zero: spend_365d = 0
        """,
        textwrap.dedent(cutoffs),
    )
    load_definitions(text)
    broken = text.replace(
        "spend_365d < mid and spend_365d > 0", "spend_365d < mid and spend_365d > 1"
    )
    assert only_problem(broken).startswith("d: no rule matches when spend_365d=0.")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "cutoffs:\n  c: {metric: spend_365d}",
            "cut-off 'c': give exactly one of top_percent or value",
        ),
        (
            "cutoffs:\n  c: {metric: spend_365d, top_percent: 0}",
            "top_percent must be a number in (0, 100]",
        ),
        (
            "cutoffs:\n  c: {metric: previous, value: 1}",
            "cut-off 'c': metric must be a numeric metric",
        ),
        ("cutoffs:\n  aov: {value: 1}", "cut-off 'aov' has the name of a metric"),
        (
            "scores:\n  s: {metric: aov, buckets: 1}",
            "score 's': buckets must be an integer from 2 to 10",
        ),
        ("scores:\n  s: {metric: has_ordered}", "score 's': metric must be a numeric metric"),
        ("scores:\n  s: {metric: aov, better: up}", "better must be 'higher' or 'lower'"),
        ("version: 3", "unknown key 'version' in the document (versions are assigned"),
    ],
)
def test_cutoff_score_and_document_problems(extra: str, message: str) -> None:
    problems = problems_of(one_dimension("a: has_ordered\nb: not has_ordered", extra))
    assert any(message in problem for problem in problems), problems


def test_cutoff_type_must_fit_the_metric() -> None:
    extra = "cutoffs:\n  big: {metric: spend_365d, top_percent: 5}"
    problem = only_problem(one_dimension("a: orders_total >= big\nb: orders_total < 5", extra))
    assert "type mismatch: orders_total is a count, but cut-off 'big' is an amount" in problem


def test_segment_and_cutoff_names_do_not_clash() -> None:
    # `top` is a cut-off after a number metric and a segment after `previous`.
    extra = "cutoffs:\n  top: {metric: spend_365d, value: 100}"
    segments = """
    top: spend_365d >= top or previous = top
    rest: spend_365d < top and (previous != top or previous is null)
    """
    definitions = load_definitions(one_dimension(segments, extra))
    assert definitions.dimension("d").segments == ("top", "rest")


def test_let_names_and_bad_lets() -> None:
    text = """
    dimensions:
      d:
        let:
          aov: has_ordered
          recent: days_since_last_order < nope
        segments:
          a: recent
          b: not recent
    """
    problems = problems_of(text)
    assert problems[0] == "d/let aov: 'aov' is already the name of a metric or cut-off"
    assert problems[1].startswith("d/let recent: column 25 of 'days_since_last_order < nope'")
    assert len(problems) == 2  # uses of the broken let are not reported again


def test_structure_problems() -> None:
    assert only_problem("dimensions: {}") == (
        "at least one dimension is required under 'dimensions'"
    )
    assert only_problem("dimensions:\n  d:\n    segments: {}") == (
        "d: a dimension needs at least one segment under 'segments'"
    )
    assert "segment name 'not' must be an identifier" in only_problem(
        one_dimension("'not': has_ordered\nb: not has_ordered")
    )
    assert only_problem(one_dimension("a: 5\nb: has_ordered")) == (
        "d/a: the condition must be a string, got 5"
    )
    assert only_problem("dimensions: [1]").startswith("dimensions must be a mapping")
    assert only_problem("a: [").startswith("YAML syntax error")


def test_all_problems_are_reported_together() -> None:
    text = one_dimension("a: nope > 1\nb: has_ordered <\nc: previous = zz")
    problems = problems_of(text)
    assert [problem.split(":")[0] for problem in problems] == ["d/a", "d/b", "d/c"]
    with pytest.raises(DefinitionError, match=r"invalid segment definitions \(3 problems\)"):
        load_definitions(text)


def test_large_dimensions_fall_back_to_sampling() -> None:
    conditions = " and ".join(
        f"{metric} >= {n}"
        for n, metric in enumerate(
            [
                "orders_total",
                "orders_30d",
                "orders_90d",
                "spend_30d",
                "spend_90d",
                "aov",
                "interactions_total",
                "interactions_7d",
                "days_since_open_cart",
            ],
            start=1,
        )
    )
    definitions = load_definitions(one_dimension(f"a: '{conditions}'\nb: 'not ({conditions})'"))
    assert definitions.dimension("d").segments == ("a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: " + "[" * 30_000, "the document nests too deeply"),
        ('{"a":' * 10_000, "the document nests too deeply"),
        (
            one_dimension("a: '" + "(" * 40 + "has_ordered" + ")" * 40 + "'\nb: not has_ordered"),
            "d/a: syntax error at column 33",
        ),
        (
            one_dimension("a: '" + "not " * 40 + "has_ordered'\nb: not has_ordered"),
            "d/a: syntax error at column 129",
        ),
    ],
)
def test_nesting_past_the_limits_is_a_problem_not_a_crash(text: str, expected: str) -> None:
    # An API caller can send any of these; a RecursionError would be a 500, or worse, a
    # definition that validated near the stack limit and failed in an evaluator.
    (problem,) = problems_of(text)
    assert problem.startswith(expected), problem


def test_lets_built_on_lets_are_bounded_in_depth() -> None:
    chain = "\n".join(f"      l{i}: l{i - 1}" for i in range(1, 150))
    text = (
        "dimensions:\n  d:\n    let:\n      l0: has_ordered\n"
        f"{chain}\n    segments:\n      a: l149\n      b: not has_ordered\n"
    )
    problems = problems_of(text)
    assert problems == ["d/let l100: 'l99' nests more than 100 deep, through its lets"]
    shallow = "\n".join(f"      l{i}: l{i - 1}" for i in range(1, 50))
    load_definitions(text.replace(chain, shallow).replace("l149", "l49"))
