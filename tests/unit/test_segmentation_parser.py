"""The condition language: tokens, precedence, and syntax errors with their column."""

from __future__ import annotations

import pytest

from shared.segmentation.parser import (
    Comparison,
    ConditionSyntaxError,
    Conjunction,
    Disjunction,
    Membership,
    NameRef,
    Negation,
    NullCheck,
    Value,
    parse,
    tokenize,
)


def test_tokens_carry_columns() -> None:
    tokens = tokenize("spend_30d >= 12.5 and not x")
    assert [(t.kind, t.text, t.column) for t in tokens] == [
        ("name", "spend_30d", 1),
        ("op", ">=", 11),
        ("number", "12.5", 14),
        ("keyword", "and", 19),
        ("keyword", "not", 23),
        ("name", "x", 27),
        ("end", "", 28),
    ]


def test_and_binds_tighter_than_or_and_not_tighter_than_and() -> None:
    tree = parse("a or not b and c")
    assert tree == Disjunction(
        (NameRef("a", 1), Conjunction((Negation(NameRef("b", 10)), NameRef("c", 16))))
    )


def test_parentheses_override_precedence() -> None:
    tree = parse("(a or b) and c")
    assert tree == Conjunction((Disjunction((NameRef("a", 2), NameRef("b", 7))), NameRef("c", 14)))


def test_comparisons_lists_and_null_checks() -> None:
    assert parse("x == -3") == Comparison(NameRef("x", 1), "=", Value("number", "-3", 6))
    assert parse("previous not in [a, b]") == Membership(
        NameRef("previous", 1), True, (Value("name", "a", 18), Value("name", "b", 21))
    )
    assert parse("x is not null") == NullCheck(NameRef("x", 1), True)
    assert parse("x is null") == NullCheck(NameRef("x", 1), False)
    assert parse("has_ordered != false") == Comparison(
        NameRef("has_ordered", 1), "!=", Value("bool", "false", 16)
    )


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "empty condition"),
        ("x <", 4, "expected a value after '<', found end of condition"),
        ("x < 5 y", 7, "expected 'and', 'or' or the end, found 'y'"),
        ("(x", 3, "expected ')' to close the '(' at column 1"),
        ("x in a", 6, "expected '[' after 'in', found 'a'"),
        ("x in [1,", 9, "expected a value after ',', found end of condition"),
        ("x not y", 7, "expected 'in' after 'not', found 'y'"),
        ("x is 5", 6, "expected 'null' after 'is', found '5'"),
        ("x = null", 5, "use 'is null'"),
        ("and x", 1, "expected a metric name or '(', found 'and'"),
        ("x > 1.2.3", 5, "unexpected character '1'"),
        ("x # y", 3, "unexpected character '#'"),
    ],
)
def test_syntax_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(ConditionSyntaxError) as caught:
        parse(text)
    assert caught.value.column == column
    assert message in caught.value.message
