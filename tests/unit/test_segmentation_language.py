"""The condition language for traits and declared event metrics: strings, dotted property
names, `contains`, their types and errors; the `metrics:` and `traits:` sections, the
retention check, what a redefined metric re-evaluates, and how fast such files load."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.segmentation import (
    DefinitionError,
    Definitions,
    PopulationStats,
    build_facts,
    evaluate,
    load_definitions,
)
from shared.segmentation.changes import changed_dimensions, diff_definitions, population_spec
from shared.segmentation.conditions import Contains, IsIn, Scope, bind, compile_condition, render
from shared.segmentation.events import EventSource, InteractionRow, interaction_contribution
from shared.segmentation.metrics import METRICS, MetricType
from shared.segmentation.parser import (
    Comparison,
    ConditionSyntaxError,
    Membership,
    NameRef,
    Negation,
    Value,
    parse,
    tokenize,
)
from shared.segmentation.parser import Contains as ContainsSyntax
from shared.segmentation.traits import TraitKind

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RETENTION = {"interactions": (timedelta(days=31), "STREAMSEG_INGEST_INTERACTION_RETENTION_DAYS")}


# ---------------------------------------------------------------- parser


def test_strings_dotted_names_and_contains_tokenize_with_columns() -> None:
    tokens = tokenize("item.category = 'running shoes' or x contains \"a'b\"")
    assert [(t.kind, t.text, t.column) for t in tokens] == [
        ("name", "item.category", 1),
        ("op", "=", 15),
        ("string", "running shoes", 17),
        ("keyword", "or", 33),
        ("name", "x", 36),
        ("name", "contains", 38),
        ("string", "a'b", 47),
        ("end", "", 52),
    ]


def test_contains_and_strings_parse() -> None:
    assert parse("interests contains running") == ContainsSyntax(
        NameRef("interests", 1), Value("name", "running", 20)
    )
    assert parse("not (interests contains 'trail running')") == Negation(
        ContainsSyntax(NameRef("interests", 6), Value("string", "trail running", 25))
    )
    assert parse("country in [DE, 'AT']") == Membership(
        NameRef("country", 1), False, (Value("name", "DE", 13), Value("string", "AT", 17))
    )
    assert parse('channel = "app"') == Comparison(
        NameRef("channel", 1), "=", Value("string", "app", 11)
    )


def test_contains_stays_usable_as_a_name() -> None:
    assert parse("contains") == NameRef("contains", 1)
    assert parse("previous = contains") == Comparison(
        NameRef("previous", 1), "=", Value("name", "contains", 12)
    )


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("country = 'DE", 11, "unterminated string: no closing ' after it"),
        ('country = "DE', 11, 'unterminated string: no closing " after it'),
        ("interests contains", 19, "expected a value after 'contains', found end of condition"),
        ("item. = x", 5, "unexpected character '.'"),
        ("'DE' = country", 1, "expected a metric name or '(', found 'DE'"),
    ],
)
def test_new_syntax_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(ConditionSyntaxError) as caught:
        parse(text)
    assert (caught.value.column, caught.value.message) == (column, message)


# ---------------------------------------------------------------- binder

SCOPE = Scope(
    dimension="d",
    metric_types={name: metric.type for name, metric in METRICS.items()},
    segments=("a", "b"),
    cutoffs={},
    lets={},
)


def bound(text: str) -> Any:
    condition, problems = bind(parse(text), SCOPE)
    assert problems == [], problems
    return condition


def messages(text: str) -> list[str]:
    _, problems = bind(parse(text), SCOPE)
    return [problem.message for problem in problems]


def test_trait_conditions_bind_and_evaluate() -> None:
    assert bound("country in [DE, 'AT']") == IsIn("country", ("DE", "AT"), False)
    assert bound("interests contains running") == Contains("interests", "running")
    predicate = compile_condition(bound("not (interests contains x) and signup_channel = app"))
    assert predicate({"interests": None, "signup_channel": "app"})
    assert predicate({"interests": ("y",), "signup_channel": "app"})
    assert not predicate({"interests": ("x", "y"), "signup_channel": "app"})
    assert not predicate({"interests": (), "signup_channel": None})
    assert compile_condition(bound("age >= 25 and age < 35"))({"age": 25})
    assert compile_condition(bound("marketing_consent"))({"marketing_consent": True})


def test_strings_render_so_that_they_parse_back() -> None:
    condition = bound("country in [DE, 'New York', \"it's\"] and interests contains 'a b'")
    text = render(condition)
    assert text == "country in [DE, 'New York', \"it's\"] and interests contains 'a b'"
    assert bound(text) == condition


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("country < DE", "country is a string; use = or != instead of <"),
        (
            "interests = running",
            "interests is a list of strings; test it with contains, e.g. interests contains "
            "<value>",
        ),
        (
            "interests in [a]",
            "interests is a list of strings; test it with contains, e.g. interests contains "
            "<value>",
        ),
        (
            "country contains DE",
            "country is a string; contains tests a list of strings (use = or in)",
        ),
        ("age contains x", "age is a number of years; contains tests a list of strings"),
        (
            "interests contains 5",
            "type mismatch: interests holds strings, but 5 is a number (quote it: '5')",
        ),
        (
            "postal_code = 12345",
            "type mismatch: postal_code is a string, but 12345 is a number (quote it: '12345')",
        ),
        ("age = 'x'", "type mismatch: age is a number of years, but 'x' is a string"),
        ("country = true", "type mismatch: country is a string, but true is true/false"),
        ("country", "country is a string, not true/false; compare it, e.g. country > 0"),
        (
            "item.sku = x",
            "unknown metric 'item.sku': event properties are read in the where of a metric "
            "declared under metrics",
        ),
        ("countri = DE", "unknown metric 'countri' (did you mean 'country'?)"),
    ],
)
def test_type_errors_name_the_problem(text: str, message: str) -> None:
    assert messages(text) == [message]


def test_existing_messages_are_unchanged() -> None:
    assert messages("orders_30d = vip") == [
        "type mismatch: orders_30d is a count, but 'vip' is neither a number nor a cut-off"
    ]
    assert messages("previous = c") == ["'c' is not a segment of d"]
    assert messages("has_ordered < true") == ["has_ordered is true/false; use = or != instead of <"]


# ---------------------------------------------------------------- definitions

SEGMENTS = """
dimensions:
  d:
    segments:
      inside: {yes}
      outside: not ({yes})
"""


def load(metrics: str = "", traits: str = "", rule: str = "has_ordered", **kw: Any) -> Definitions:
    text = ""
    if traits:
        text += f"traits:\n{traits}\n"
    if metrics:
        text += f"metrics:\n{metrics}\n"
    return load_definitions(text + SEGMENTS.format(yes=rule), **kw)


def problems(
    metrics: str = "", traits: str = "", rule: str = "has_ordered", **kw: Any
) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load(metrics, traits, rule, **kw)
    return [str(problem) for problem in caught.value.problems]


def test_the_issue_examples_load_with_their_types() -> None:
    definitions = load(
        """
  email_clicks_14d:  {count: email_click, within: 14d}
  running_spend_90d: {sum: amount, of: order_placed, where: "item.category = 'running'",
                      within: 90d}
  app_orders_365d:   {count: order_placed, where: "channel = 'app'", within: 365d}
  skus_bought:       {distinct: item.sku, of: order_placed}
  units_36h:         {sum: quantity, of: order_placed, within: 36h}
  last_login:        {last: login, within: 30d}
  first_click:       {first: email_click}
  any_recent:        {count: interaction, where: "price >= 10 and not is_gift", within: 7d}
  emails:            {count: [email_open, email_click]}
""",
        rule="email_clicks_14d >= 3 and running_spend_90d > 100 and last_login is not null",
    )
    types = {name: definitions.metric(name).type for name in definitions.event_metrics}
    assert types == {
        "email_clicks_14d": MetricType.COUNT,
        "running_spend_90d": MetricType.MONEY,
        "app_orders_365d": MetricType.COUNT,
        "skus_bought": MetricType.COUNT,
        "units_36h": MetricType.COUNT,
        "last_login": MetricType.DAYS,
        "first_click": MetricType.DAYS,
        "any_recent": MetricType.COUNT,
        "emails": MetricType.COUNT,
    }
    spend = definitions.event_metrics["running_spend_90d"]
    assert spend.filter.source is EventSource.ORDERS
    assert spend.filter.uses_items
    assert spend.filter.where_source == "item.category = 'running'"
    assert spend.window == timedelta(days=90)
    assert spend.field == "amount"
    assert definitions.event_metrics["units_36h"].window == timedelta(hours=36)
    assert definitions.event_metrics["any_recent"].filter.types == frozenset()
    assert definitions.event_metrics["emails"].filter.types == {"email_open", "email_click"}
    assert definitions.metric("last_login").nullable
    assert not definitions.metric("email_clicks_14d").nullable
    names = {dependence.metric for dependence in definitions.time_dependences}
    assert {"email_clicks_14d", "running_spend_90d", "last_login"} <= names


def test_interaction_where_reads_values_of_the_type_its_literal_has() -> None:
    definitions = load(
        '  big: {count: interaction, where: "price >= 10 and not is_gift and type != login"}'
    )
    event_filter = definitions.event_metrics["big"].filter

    def counts(type_: str, **properties: Any) -> bool:
        row = InteractionRow(NOW, type_, properties)
        return interaction_contribution(event_filter, row) is not None

    assert counts("product_view", price=10)
    assert counts("product_view", price=12.5, is_gift=False)
    assert not counts("product_view", price=9)
    assert not counts("login", price=50)
    assert not counts("product_view", price="50")  # a string price is not a number: null
    assert not counts("product_view", price=True)
    assert not counts("product_view", price=50, is_gift=True)
    assert counts("product_view", price=50, is_gift="yes")  # not a boolean: null, not true


def test_custom_traits_are_typed_and_null_when_missing() -> None:
    definitions = load(
        traits="  points: number\n  vip: boolean\n  tags: strings\n  tier: string",
        rule="points >= 100 or vip or tags contains gold or tier in [a, b]",
    )
    assert definitions.custom_traits == {
        "points": TraitKind.NUMBER,
        "vip": TraitKind.BOOLEAN,
        "tags": TraitKind.STRINGS,
        "tier": TraitKind.STRING,
    }
    assert definitions.metric("points").type is MetricType.NUMBER
    none = build_facts("c", NOW)
    assert (
        evaluate(definitions, none, NOW, {}, PopulationStats()).assignments["d"].segment
        == "outside"
    )
    rich = build_facts("c", NOW, traits={"points": 150.5})
    assert (
        evaluate(definitions, rich, NOW, {}, PopulationStats()).assignments["d"].segment == "inside"
    )
    tagged = build_facts("c", NOW, traits={"tags": ("gold",)})
    result = evaluate(definitions, tagged, NOW, {}, PopulationStats())
    assert result.assignments["d"].reason == "tags=[gold] contains gold"


def test_scores_and_cutoffs_over_declared_metrics() -> None:
    text = """
metrics:
  clicks_30d: {count: email_click, within: 30d}
cutoffs:
  top_clickers: {metric: clicks_30d, top_percent: 10}
  many: {metric: clicks_30d, value: 5}
scores:
  click_score: {metric: clicks_30d, buckets: 3}
dimensions:
  d:
    segments:
      top: clicks_30d >= top_clickers
      many: clicks_30d < top_clickers and clicks_30d >= many
      scored: clicks_30d < top_clickers and clicks_30d < many and click_score = 3
      rest: clicks_30d < top_clickers and clicks_30d < many and click_score != 3
"""
    definitions = load_definitions(text)
    assert definitions.population_metrics == {"clicks_30d"}
    assert definitions.cutoffs["many"].value == 5
    stats = PopulationStats.from_dict(
        definitions, {"cutoffs": {"top_clickers": "9"}, "edges": {"click_score": ["1", "3"]}}
    )
    assert stats.cutoffs["top_clickers"] == 9
    assert stats.edges["click_score"] == (1, 3)


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ("  a: {count: email_clik}", "metric 'a': count: unknown event type 'email_clik'"),
        ("  a: {sum: price}", "metric 'a': sum: must be amount or quantity, got 'price'"),
        (
            "  a: {sum: amount, of: login}",
            "metric 'a': sums are of orders only: of must be order_placed",
        ),
        ("  a: {first: login, within: 3d}", "metric 'a': first with within is not supported"),
        ("  a: {count: login, within: 0d}", "metric 'a': within: must be a positive whole number"),
        ("  a: {count: login, within: 2w}", "metric 'a': within: must be a positive whole number"),
        ("  a: {count: login, within: 14}", "metric 'a': within: must be a positive whole number"),
        ("  a: {count: login, sum: amount}", "metric 'a': give exactly one of count, sum"),
        ("  a: {count: login, of: login}", "metric 'a': of applies to sum and distinct"),
        ("  a: {distinct: item.sku}", "metric 'a': distinct: needs of: <event type>"),
        ("  a: {distinct: price, of: order_placed}", "metric 'a': distinct: an order has channel"),
        ("  a: {count: [login, order_placed]}", "metric 'a': count: order_placed cannot be mixed"),
        ("  a: {count: login, window: 3d}", "metric 'a': unknown key 'window'"),
        ("  a: 3", "metric 'a': must be a mapping"),
        (
            "  a: {count: order_placed, where: \"chanel = 'app'\"}",
            "metric 'a': where: column 1 of \"chanel = 'app'\": unknown property 'chanel' of "
            "orders (did you mean 'channel'?)",
        ),
        (
            '  a: {count: order_placed, where: "channel = \'app"}',
            "metric 'a': where: syntax error at column 11",
        ),
        (
            "  a: {count: login, where: \"x > 1 and x = 'a'\"}",
            "metric 'a': where: column 11 of \"x > 1 and x = 'a'\": property x is compared with "
            "a number and with a string",
        ),
        (
            "  a: {count: login, where: 'tags contains a'}",
            "metric 'a': where: column 1 of 'tags contains a': contains tests a list of strings",
        ),
        ("  spend_30d: {count: login}", "metric 'spend_30d' has the name of a built-in metric"),
        ("  country: {count: login}", "metric 'country' has the name of a built-in metric"),
        ("  d: {count: login}", "d: dimension 'd' has the name of a declared metric"),
        ("  and: {count: login}", "metric name 'and' must be an identifier"),
    ],
)
def test_metric_problems_name_the_metric(metrics: str, message: str) -> None:
    found = problems(metrics)
    assert any(problem.startswith(message) for problem in found), found


@pytest.mark.parametrize(
    ("traits", "message"),
    [
        ("  country: string", "trait 'country' is a built-in trait; declare only custom ones"),
        ("  pts: numbr", "trait 'pts': type must be one of string, number, boolean, strings"),
        ("  age: number", "trait 'age' has the name of a built-in metric"),
        ("  orders_30d: number", "trait 'orders_30d' has the name of a built-in metric"),
    ],
)
def test_trait_problems_name_the_trait(traits: str, message: str) -> None:
    found = problems(traits=traits)
    assert any(problem.startswith(message) for problem in found), found


def test_names_may_not_collide_across_sections() -> None:
    text = """
traits:
  x: number
metrics:
  x: {count: login}
cutoffs:
  clicks: {metric: orders_30d, value: 3}
scores:
  y: {metric: orders_30d, buckets: 3}
dimensions:
  d:
    segments:
      all: has_ordered or not has_ordered
"""
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text.replace("  clicks:", "  x:"))
    found = [str(problem) for problem in caught.value.problems]
    assert "metric 'x' has the name of a declared trait" in found
    assert "cut-off 'x' has the name of a metric" in found


def test_a_window_longer_than_retention_is_refused_naming_the_setting() -> None:
    found = problems("  a: {count: login, within: 32d}", retention=RETENTION)
    assert found == [
        "metric 'a': within 32d is longer than the 31 days interaction rows are kept "
        "(STREAMSEG_INGEST_INTERACTION_RETENTION_DAYS); shorten the window or raise the setting"
    ]
    load("  a: {count: login, within: 31d}", retention=RETENTION)
    load("  a: {count: login, within: 744h}", retention=RETENTION)
    assert problems("  a: {last: login, within: 745h}", retention=RETENTION)
    load("  a: {count: login}", retention=RETENTION)  # lifetime: kept as a running total
    load("  a: {count: order_placed, within: 3650d}", retention=RETENTION)  # orders are kept
    load("  a: {count: login, within: 32d}")  # stored versions load without the check


def test_a_redefined_metric_reevaluates_the_dimensions_that_read_it() -> None:
    text = """
metrics:
  clicks: {count: email_click, within: 14d%s}
  other: {count: login}
dimensions:
  a:
    segments:
      some: clicks > 0
      none: clicks = 0
  b:
    segments:
      some: other > 0
      none: other = 0
"""
    old = load_definitions(text % "")
    described = load_definitions(text % ", description: clicks on emails")
    narrower = load_definitions(text % ", where: \"campaign = 'x'\"")
    assert changed_dimensions(old, described) == ()
    assert changed_dimensions(old, narrower) == ("a",)
    assert old.content_hash != narrower.content_hash
    diff = diff_definitions(old, narrower)
    assert [d.inputs_changed for d in diff.dimensions] == [("clicks",), ()]
    assert population_spec(old) == population_spec(narrower)  # no percentile reads it


def test_a_redefined_score_input_changes_the_population_spec() -> None:
    text = """
metrics:
  clicks: {count: email_click, within: %s}
scores:
  s: {metric: clicks, buckets: 2}
dimensions:
  a:
    segments:
      top: s = 2
      rest: s != 2
"""
    assert population_spec(load_definitions(text % "14d")) != population_spec(
        load_definitions(text % "30d")
    )


def test_coverage_finds_gaps_and_overlaps_over_traits_and_declared_metrics() -> None:
    text = """
metrics:
  clicks: {count: email_click, within: 14d}
  last_login: {last: login, within: 30d}
dimensions:
  d:
    segments:
      dach: country in [DE, AT] and clicks >= 2
      runner: interests contains running and not (country in [DE, AT] and clicks >= 2)
      %s
"""
    gap = "rest: not (interests contains running) and not (country in [DE, AT])"
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text % gap)
    (message,) = [str(problem) for problem in caught.value.problems]
    assert message.startswith("d: no rule matches when ")
    assert "country=DE" in message or "country=AT" in message
    overlap = "rest: not (interests contains running) or last_login is null"
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text % overlap)
    assert "both match" in str(caught.value.problems[0])
    covered = "rest: not (interests contains running) and not (country in [DE, AT] and clicks >= 2)"
    load_definitions(text % covered)


def test_coverage_of_ages_and_numbers_is_exact_at_each_threshold() -> None:
    text = """
traits:
  points: number
dimensions:
  d:
    segments:
      young: age < 25
      mid: age >= 25 and age %s 35
      old: age >= 35
      unknown: age is null
  p:
    segments:
      low: points < 2.5
      high: points > 2.5
      none: points is null
"""
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text % "<=")
    found = [str(problem) for problem in caught.value.problems]
    assert "d: rules mid and old both match when age=35" in found
    assert "p: no rule matches when points=2.5" in found


def test_twenty_event_metrics_traits_and_many_dimensions_load_fast() -> None:
    kinds = [
        "{count: email_click, within: %dd}",
        "{sum: amount, of: order_placed, where: \"item.category = 'c%d'\", within: 90d}",
        "{count: order_placed, where: \"channel = 'app' and currency != 'X%d'\", within: 365d}",
        "{distinct: item.sku, of: order_placed, where: \"item.category != 'z%d'\"}",
        "{last: login, within: %dh}",
    ]
    metrics = "\n".join(f"  m{i}: " + kinds[i % 5] % (i + 1) for i in range(20))
    thresholds = ["m{0} >= 2", "m{0} > 50", "m{0} >= 1", "m{0} >= 3", "m{0} < 1"]
    dimensions = []
    for i in range(20):
        condition = thresholds[i % 5].format(i)
        trait = ["country in [DE, AT]", "age >= 30", "interests contains running"][i % 3]
        dimensions.append(
            f"  d{i}:\n    segments:\n"
            f"      a: {condition} and {trait}\n"
            f"      b: {condition} and not ({trait})\n"
            f"      c: not ({condition})"
        )
    text = f"traits:\n  tier: string\nmetrics:\n{metrics}\ndimensions:\n" + "\n".join(dimensions)
    started = time.perf_counter()
    definitions = load_definitions(text)
    elapsed = time.perf_counter() - started
    assert len(definitions.event_metrics) == 20
    assert len(definitions.dimensions) == 20
    assert elapsed < 2.0, f"{elapsed:.2f} s"


def test_age_and_days_since_signup_are_trait_metrics() -> None:
    definitions = load(rule="age >= 18 and days_since_signup < 30")
    facts = build_facts(
        "c",
        NOW,
        traits={"birth_date": date(2008, 6, 1), "signup_at": NOW - timedelta(days=29)},
    )
    result = evaluate(definitions, facts, NOW, {}, PopulationStats())
    assert result.assignments["d"].segment == "inside"
    assert result.next_change_at == NOW + timedelta(days=1)
    younger = build_facts("c", NOW, traits={"birth_date": date(2008, 6, 2)})
    result = evaluate(definitions, younger, NOW, {}, PopulationStats())
    assert result.assignments["d"].segment == "outside"
    assert result.next_change_at is None  # no signup: days_since_signup stays null


def test_decimal_amounts_compare_with_sum_metrics() -> None:
    definitions = load("  s: {sum: amount, of: order_placed, within: 30d}", rule="s >= 10.5")
    assert definitions.dimensions[0].thresholds["s"] == {Decimal("10.5")}
