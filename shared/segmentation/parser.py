"""Tokenizer and recursive-descent parser for the condition language (no eval anywhere).

Grammar (keywords are lower case)::

    condition  := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" or_expr ")"
                | NAME                                  boolean metric or `let` name
                | NAME ("<" | "<=" | ">" | ">=" | "=" | "!=") value
                | NAME ["not"] "in" "[" value ("," value)* "]"
                | NAME "is" ["not"] "null"
                | NAME "contains" value                 a list of strings holds the value
    value      := NUMBER | STRING | NAME | "true" | "false"
    NAME       := identifier ("." identifier)*          dotted: an event property (item.sku)
    STRING     := '...' | "..."                        no escapes; the other quote may appear

A value NAME is a segment, a cut-off or a string, as the subject's type says. `contains` is
a keyword only after a subject, so it stays usable as a name. The parser only builds a
syntax tree; names are resolved and type-checked in `conditions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
# Parentheses and `not`s deeper than this are refused: every stage after the parser recurses
# too, and a condition that validated near the stack limit could fail in an evaluator.
MAX_NESTING = 32
COMPARISON_OPERATORS = ("<=", ">=", "!=", "<", ">", "=")

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_\d.]))
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<op><=|>=|!=|==|<|>|=)
      | (?P<punct>[()\[\],])""",
    re.VERBOSE,
)


class ConditionSyntaxError(ValueError):
    """A condition that does not follow the grammar; `column` is 1-based."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column
        self.message = message


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "number", "name", "string", "keyword", "op", "punct" or "end"
    text: str
    column: int

    def describe(self) -> str:
        return "end of condition" if self.kind == "end" else repr(self.text)


@dataclass(frozen=True, slots=True)
class Value:
    """A literal on the right-hand side: a number, a name (segment, cut-off or string), a
    quoted string (`text` without its quotes) or a boolean."""

    kind: str  # "number", "name", "string" or "bool"
    text: str
    column: int

    @property
    def number(self) -> Decimal:
        return Decimal(self.text)


@dataclass(frozen=True, slots=True)
class NameRef:
    name: str
    column: int


@dataclass(frozen=True, slots=True)
class Comparison:
    subject: NameRef
    operator: str
    value: Value


@dataclass(frozen=True, slots=True)
class Membership:
    subject: NameRef
    negated: bool
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Contains:
    """`subject contains value`: a list of strings holds `value`."""

    subject: NameRef
    value: Value


@dataclass(frozen=True, slots=True)
class NullCheck:
    subject: NameRef
    negated: bool


@dataclass(frozen=True, slots=True)
class Negation:
    operand: Syntax


@dataclass(frozen=True, slots=True)
class Conjunction:
    operands: tuple[Syntax, ...]


@dataclass(frozen=True, slots=True)
class Disjunction:
    operands: tuple[Syntax, ...]


Syntax = (
    NameRef | Comparison | Membership | Contains | NullCheck | Negation | Conjunction | Disjunction
)


def tokenize(text: str) -> list[Token]:
    """Split a condition into tokens, each with its 1-based column."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] in "'\"":
                raise ConditionSyntaxError(
                    position + 1, f"unterminated string: no closing {text[position]} after it"
                )
            raise ConditionSyntaxError(position + 1, f"unexpected character {text[position]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            word = match.group()
            if kind == "name" and word in KEYWORDS:
                kind = "keyword"
            if word == "==":
                word = "="
            if kind == "string":
                word = word[1:-1]
            tokens.append(Token(kind, word, position + 1))
        position = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def parse(text: str) -> Syntax:
    """Parse a condition into a syntax tree or raise `ConditionSyntaxError`."""
    return _Parser(tokenize(text)).parse()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    def parse(self) -> Syntax:
        if self._peek().kind == "end":
            raise ConditionSyntaxError(1, "empty condition")
        tree = self._or()
        token = self._peek()
        if token.kind != "end":
            raise ConditionSyntaxError(
                token.column, f"expected 'and', 'or' or the end, found {token.describe()}"
            )
        return tree

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _advance(self) -> Token:
        token = self._tokens[self._index]
        self._index += 1
        return token

    def _accept(self, kind: str, text: str) -> bool:
        token = self._peek()
        if token.kind == kind and token.text == text:
            self._index += 1
            return True
        return False

    def _expect(self, kind: str, text: str, context: str) -> None:
        if not self._accept(kind, text):
            token = self._peek()
            raise ConditionSyntaxError(
                token.column, f"expected {text!r} {context}, found {token.describe()}"
            )

    def _or(self) -> Syntax:
        operands = [self._and()]
        while self._accept("keyword", "or"):
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Disjunction(tuple(operands))

    def _and(self) -> Syntax:
        operands = [self._not()]
        while self._accept("keyword", "and"):
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else Conjunction(tuple(operands))

    def _nest(self, token: Token) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise ConditionSyntaxError(
                token.column, f"parentheses and 'not' nest more than {MAX_NESTING} deep"
            )

    def _not(self) -> Syntax:
        token = self._peek()
        if self._accept("keyword", "not"):
            self._nest(token)
            operand = self._not()
            self._depth -= 1
            return Negation(operand)
        return self._primary()

    def _primary(self) -> Syntax:
        token = self._advance()
        if token.kind == "punct" and token.text == "(":
            self._nest(token)
            inner = self._or()
            self._expect("punct", ")", f"to close the '(' at column {token.column}")
            self._depth -= 1
            return inner
        if token.kind != "name":
            raise ConditionSyntaxError(
                token.column, f"expected a metric name or '(', found {token.describe()}"
            )
        subject = NameRef(token.text, token.column)
        following = self._peek()
        if following.kind == "op":
            self._advance()
            return Comparison(subject, following.text, self._value(following.text))
        if following.kind == "keyword" and following.text == "is":
            self._advance()
            negated = self._accept("keyword", "not")
            self._expect("keyword", "null", "after 'is'")
            return NullCheck(subject, negated)
        if following.kind == "keyword" and following.text in ("in", "not"):
            self._advance()
            negated = following.text == "not"
            if negated:
                self._expect("keyword", "in", "after 'not'")
            return Membership(subject, negated, self._list())
        if following.kind == "name" and following.text == "contains":
            self._advance()
            return Contains(subject, self._value("contains"))
        return subject

    def _value(self, after: str) -> Value:
        token = self._advance()
        if token.kind in ("number", "name", "string"):
            return Value(token.kind, token.text, token.column)
        if token.kind == "keyword" and token.text in ("true", "false"):
            return Value("bool", token.text, token.column)
        hint = " (use 'is null' to test for a missing value)" if token.text == "null" else ""
        raise ConditionSyntaxError(
            token.column, f"expected a value after {after!r}, found {token.describe()}{hint}"
        )

    def _list(self) -> tuple[Value, ...]:
        self._expect("punct", "[", "after 'in'")
        values = [self._value("[")]
        while self._accept("punct", ","):
            values.append(self._value(","))
        self._expect("punct", "]", "to close the list")
        return tuple(values)
