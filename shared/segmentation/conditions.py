"""Typed conditions: name resolution and type checks, compilation to predicates, and
explanations with the actual values ("days_since_last_order=95.2 >= 90").

Missing values: any comparison or `in` test whose metric (or cut-off) is null is false, so
`not` of it is true. Only `is null` / `is not null` look at missing values directly.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.segmentation import parser
from shared.segmentation.metrics import MetricType, MetricValue, Number, format_value

Env = Mapping[str, MetricValue]
Predicate = Callable[[Env], bool]

_OPERATORS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class Compare:
    """`metric <op> constant`, or `metric <op> cutoff` when `cutoff` names a cut-off whose
    value is looked up in the environment at evaluation time."""

    metric: str
    operator: str
    constant: MetricValue
    cutoff: str | None = None


@dataclass(frozen=True, slots=True)
class IsIn:
    metric: str
    values: tuple[MetricValue, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Contains:
    """`metric contains value`: a list of strings (a trait such as interests) holds it."""

    metric: str
    value: str


@dataclass(frozen=True, slots=True)
class IsNull:
    metric: str
    negated: bool


@dataclass(frozen=True, slots=True)
class Truth:
    """A boolean metric used on its own, as in `has_ordered`."""

    metric: str


@dataclass(frozen=True, slots=True)
class LetRef:
    """A named condition declared under the dimension's `let`."""

    name: str
    body: Condition


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition


@dataclass(frozen=True, slots=True)
class All:
    operands: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    operands: tuple[Condition, ...]


Atom = Compare | IsIn | Contains | IsNull | Truth
Condition = Compare | IsIn | Contains | IsNull | Truth | LetRef | Not | All | AnyOf


@dataclass(frozen=True, slots=True)
class PropertyScope:
    """The names of a declared metric's `where`: an event's properties. `known` are typed
    (an order's channel, currency, item.sku, item.category); when `open`, any other name is
    a property too, typed by the literal it is compared with (interaction properties)."""

    noun: str  # "orders" or "interactions", for messages
    known: Mapping[str, MetricType]
    open: bool


@dataclass(frozen=True, slots=True)
class Scope:
    """What names mean inside one dimension's conditions (or, with `properties`, inside a
    metric's `where`)."""

    dimension: str
    metric_types: Mapping[str, MetricType]
    segments: tuple[str, ...]
    cutoffs: Mapping[str, MetricType | None]  # None: an absolute cut-off, fits any number
    lets: Mapping[str, Condition]
    properties: PropertyScope | None = None
    # Segment-typed names other than `previous` (an audience reads dimensions by name), each
    # with its dimension's segments; `previous` has `segments`.
    segment_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def property_scope(noun: str, known: Mapping[str, MetricType], open_: bool) -> Scope:
    """The scope of a `where` over `noun`'s events."""
    return Scope(noun, {}, (), {}, {}, PropertyScope(noun, known, open_))


class ConditionProblem(ValueError):
    """A name or type problem in one condition; `column` is 1-based."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column
        self.message = message


def bind(syntax: parser.Syntax, scope: Scope) -> tuple[Condition | None, list[ConditionProblem]]:
    """Resolve names and check types; returns the condition or every problem found."""
    binder = _Binder(scope)
    condition = binder.bind(syntax)
    return (None if binder.problems else condition), binder.problems


def _closest(name: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _describe(type_: MetricType, dimension: str) -> str:
    return {
        MetricType.COUNT: "a count",
        MetricType.MONEY: "an amount",
        MetricType.DAYS: "a number of days",
        MetricType.SCORE: "a score",
        MetricType.YEARS: "a number of years",
        MetricType.NUMBER: "a number",
        MetricType.BOOL: "true/false",
        MetricType.SEGMENT: f"a segment of {dimension}",
        MetricType.STRING: "a string",
        MetricType.STRINGS: "a list of strings",
    }[type_]


_LITERAL_TYPES: Mapping[str, MetricType] = {
    "number": MetricType.NUMBER,
    "name": MetricType.STRING,
    "string": MetricType.STRING,
    "bool": MetricType.BOOL,
}
_EQUALITY_ONLY = (MetricType.BOOL, MetricType.SEGMENT, MetricType.STRING)


class _Binder:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.problems: list[ConditionProblem] = []
        self._property_types: dict[str, MetricType] = {}  # open properties, as first typed

    def bind(self, node: parser.Syntax) -> Condition:
        match node:
            case parser.Disjunction(operands):
                return AnyOf(tuple(self.bind(operand) for operand in operands))
            case parser.Conjunction(operands):
                return All(tuple(self.bind(operand) for operand in operands))
            case parser.Negation(operand):
                return Not(self.bind(operand))
            case parser.NameRef(name, column):
                return self._standalone(name, column)
            case parser.NullCheck(subject, negated):
                if self.scope.properties is None or not self.scope.properties.open:
                    self._metric(subject)
                return IsNull(subject.name, negated)
            case parser.Contains(subject, value):
                return self._contains(subject, value)
            case parser.Comparison(subject, op, value):
                type_ = self._metric(subject, (value,))
                if type_ is MetricType.STRINGS:
                    self._not_a_list_test(subject)
                    return Compare(subject.name, op, None)
                if type_ in _EQUALITY_ONLY and op not in ("=", "!="):
                    self._problem(
                        subject.column,
                        f"{subject.name} is {_describe(type_, self._owner(subject.name))}; "
                        f"use = or != instead of {op}",
                    )
                is_cutoff = value.kind == "name" and value.text in self.scope.cutoffs
                if type_ is not None and type_.is_number and is_cutoff:
                    self._cutoff(subject.name, type_, value)
                    return Compare(subject.name, op, None, value.text)
                return Compare(subject.name, op, self._constant(subject.name, type_, value))
            case parser.Membership(subject, negated, values):
                type_ = self._metric(subject, values)
                if type_ is MetricType.STRINGS:
                    self._not_a_list_test(subject)
                    return IsIn(subject.name, (), negated)
                constants = tuple(self._constant(subject.name, type_, v) for v in values)
                return IsIn(subject.name, constants, negated)
        raise AssertionError(node)

    def _problem(self, column: int, message: str) -> None:
        self.problems.append(ConditionProblem(column, message))

    def _owner(self, name: str) -> str:
        """The dimension whose segments a segment-typed name holds."""
        return name if name in self.scope.segment_values else self.scope.dimension

    def _not_a_list_test(self, subject: parser.NameRef) -> None:
        self._problem(
            subject.column,
            f"{subject.name} is a list of strings; test it with contains, "
            f"e.g. {subject.name} contains <value>",
        )

    def _contains(self, subject: parser.NameRef, value: parser.Value) -> Condition:
        properties = self.scope.properties
        if properties is not None:
            self._problem(
                subject.column,
                f"contains tests a list of strings; the properties of {properties.noun} "
                f"are single values (use = or in)",
            )
            return Contains(subject.name, value.text)
        type_ = self._metric(subject)
        if type_ is not None and type_ is not MetricType.STRINGS:
            hint = " (use = or in)" if type_ is MetricType.STRING else ""
            self._problem(
                subject.column,
                f"{subject.name} is {_describe(type_, self.scope.dimension)}; contains tests "
                f"a list of strings{hint}",
            )
        elif type_ is not None and value.kind not in ("name", "string"):
            self._problem(
                value.column,
                f"type mismatch: {subject.name} holds strings, but {self._found(value)}",
            )
        return Contains(subject.name, value.text)

    def _found(self, value: parser.Value) -> str:
        if value.kind == "number":
            return f"{value.text} is a number (quote it: '{value.text}')"
        if value.kind == "bool":
            return f"{value.text} is true/false"
        return f"{value.text!r} is a string"

    def _property(
        self, subject: parser.NameRef, values: tuple[parser.Value, ...]
    ) -> MetricType | None:
        properties = self.scope.properties
        assert properties is not None
        known = properties.known.get(subject.name)
        if known is not None:
            return known
        if not properties.open:
            expected = ", ".join(sorted(properties.known))
            self._problem(
                subject.column,
                f"unknown property {subject.name!r} of {properties.noun}"
                f"{_closest(subject.name, properties.known)}; expected: {expected}",
            )
            return None
        kinds = {_LITERAL_TYPES[value.kind] for value in values}
        if len(kinds) > 1:
            self._problem(
                subject.column, f"the values {subject.name} is compared with are of mixed types"
            )
            return None
        type_ = kinds.pop() if kinds else MetricType.BOOL
        earlier = self._property_types.setdefault(subject.name, type_)
        if earlier is not type_:
            self._problem(
                subject.column,
                f"property {subject.name} is compared with {_describe(earlier, '')} and with "
                f"{_describe(type_, '')}; a property has one type in a condition",
            )
            return None
        return type_

    def _standalone(self, name: str, column: int) -> Condition:
        if self.scope.properties is not None:
            type_ = self._property(parser.NameRef(name, column), ())
            if type_ not in (None, MetricType.BOOL):
                assert type_ is not None
                self._problem(column, f"{name} is {_describe(type_, '')}, not true/false")
            return Truth(name)
        if name in self.scope.lets:
            return LetRef(name, self.scope.lets[name])
        type_ = self.scope.metric_types.get(name)
        if type_ is MetricType.BOOL:
            return Truth(name)
        if type_ is None:
            known = [*self.scope.metric_types, *self.scope.lets]
            self._problem(column, f"unknown metric {name!r}{_closest(name, known)}")
        else:
            example = f"{name} = <segment>" if type_ is MetricType.SEGMENT else f"{name} > 0"
            self._problem(
                column,
                f"{name} is {_describe(type_, self._owner(name))}, not true/false; "
                f"compare it, e.g. {example}",
            )
        return Truth(name)

    def _metric(
        self, subject: parser.NameRef, values: tuple[parser.Value, ...] = ()
    ) -> MetricType | None:
        if self.scope.properties is not None:
            return self._property(subject, values)
        type_ = self.scope.metric_types.get(subject.name)
        if type_ is not None:
            return type_
        if "." in subject.name:
            self._problem(
                subject.column,
                f"unknown metric {subject.name!r}: event properties are read in the where "
                f"of a metric declared under metrics",
            )
        elif subject.name in self.scope.lets:
            self._problem(subject.column, f"{subject.name!r} is a let condition; use it on its own")
        else:
            known = [*self.scope.metric_types, *self.scope.lets]
            self._problem(
                subject.column, f"unknown metric {subject.name!r}{_closest(subject.name, known)}"
            )
        return None

    def _cutoff(self, metric: str, type_: MetricType, value: parser.Value) -> None:
        cutoff_type = self.scope.cutoffs[value.text]
        if cutoff_type is not None and cutoff_type is not type_:
            dimension = self.scope.dimension
            self._problem(
                value.column,
                f"type mismatch: {metric} is {_describe(type_, dimension)}, "
                f"but cut-off {value.text!r} is {_describe(cutoff_type, dimension)}",
            )

    def _constant(self, metric: str, type_: MetricType | None, value: parser.Value) -> MetricValue:
        if type_ is None:
            return None
        expected = _describe(type_, self._owner(metric))
        if type_.is_number and value.kind == "number":
            return type_.coerce(value.number)
        if type_ is MetricType.BOOL and value.kind == "bool":
            return value.text == "true"
        if type_ is MetricType.STRING and value.kind in ("name", "string"):
            return value.text
        if type_ is MetricType.SEGMENT and value.kind in ("name", "string"):
            segments = self.scope.segment_values.get(metric, self.scope.segments)
            if value.text in segments:
                return value.text
            self._problem(
                value.column,
                f"{value.text!r} is not a segment of {self._owner(metric)}"
                f"{_closest(value.text, segments)}",
            )
            return None
        if type_.is_number and value.kind == "name":
            found = f"{value.text!r} is neither a number nor a cut-off"
            found += _closest(value.text, self.scope.cutoffs)
        elif value.kind == "name":
            found = f"{value.text!r} is a name"
        elif value.kind == "string" or type_ is MetricType.STRING:
            found = self._found(value)
        else:
            found = f"{value.text} is {'a number' if value.kind == 'number' else 'true/false'}"
        self._problem(value.column, f"type mismatch: {metric} is {expected}, but {found}")
        return None


def compile_condition(condition: Condition) -> Predicate:
    """Turn a condition into a closure over an environment of metric values.

    Built once at load time so that evaluation walks no tree and allocates nothing."""
    match condition:
        case Compare(metric, op, constant, None):
            return _compare_constant(metric, op, constant)
        case Compare(metric, op, _, cutoff):
            assert cutoff is not None
            return _compare_cutoff(metric, op, cutoff)
        case IsIn(metric, values, negated):
            members = frozenset(values)
            if negated:
                return lambda env: (v := env[metric]) is not None and v not in members
            return lambda env: (v := env[metric]) is not None and v in members
        case Contains(metric, member):
            return lambda env: (v := env[metric]) is not None and member in v  # type: ignore[operator]
        case IsNull(metric, negated):
            if negated:
                return lambda env: env[metric] is not None
            return lambda env: env[metric] is None
        case Truth(metric):
            return lambda env: env[metric] is True
        case LetRef(_, body):
            return compile_condition(body)
        case Not(operand):
            inner = compile_condition(operand)
            return lambda env: not inner(env)
        case All(operands):
            return _all(tuple(compile_condition(operand) for operand in operands))
        case AnyOf(operands):
            return _any(tuple(compile_condition(operand) for operand in operands))
    raise AssertionError(condition)


# The closures below are the innermost loop of evaluate(): one specialised closure per
# operator and arity, so a check is a dict lookup and a native comparison, no extra calls.
def _compare_constant(metric: str, op: str, c: Any) -> Predicate:
    def lt(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v < c

    def le(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v <= c

    def gt(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v > c

    def ge(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v >= c

    def eq(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v == c

    def ne(env: Mapping[str, Any]) -> bool:
        return (v := env[metric]) is not None and v != c

    return {"<": lt, "<=": le, ">": gt, ">=": ge, "=": eq, "!=": ne}[op]


def _compare_cutoff(metric: str, op: str, cutoff: str) -> Predicate:
    compare = _OPERATORS[op]

    def check(env: Env) -> bool:
        value, limit = env[metric], env[cutoff]
        return value is not None and limit is not None and compare(value, limit)

    return check


def _all(predicates: tuple[Predicate, ...]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda env: first(env) and second(env)
    if len(predicates) == 3:
        first, second, third = predicates
        return lambda env: first(env) and second(env) and third(env)

    def check(env: Env) -> bool:
        for predicate in predicates:  # noqa: SIM110 (all() of a generator allocates)
            if not predicate(env):
                return False
        return True

    return check


def _any(predicates: tuple[Predicate, ...]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda env: first(env) or second(env)

    def check(env: Env) -> bool:
        for predicate in predicates:  # noqa: SIM110 (any() of a generator allocates)
            if predicate(env):
                return True
        return False

    return check


def holds(condition: Condition, env: Env) -> bool:
    """Interpret a condition directly (for explanations; `compile_condition` is the fast path)."""
    match condition:
        case Compare(metric, op, constant, cutoff):
            value = env[metric]
            limit = constant if cutoff is None else env[cutoff]
            return value is not None and limit is not None and _OPERATORS[op](value, limit)
        case IsIn(metric, values, negated):
            value = env[metric]
            return value is not None and (value in values) != negated
        case Contains(metric, member):
            value = env[metric]
            return value is not None and member in value  # type: ignore[operator]
        case IsNull(metric, negated):
            return (env[metric] is None) != negated
        case Truth(metric):
            return env[metric] is True
        case LetRef(_, body):
            return holds(body, env)
        case Not(operand):
            return not holds(operand, env)
        case All(operands):
            return all(holds(operand, env) for operand in operands)
        case AnyOf(operands):
            return any(holds(operand, env) for operand in operands)
    raise AssertionError(condition)


def explain(condition: Condition, env: Env) -> str:
    """Render a condition that holds in `env`, with the actual values substituted.

    For `or`, only the branch that holds is shown: that is the reason."""
    match condition:
        case AnyOf(operands):
            for operand in operands:
                if holds(operand, env):
                    return explain(operand, env)
        case All(operands):
            return " and ".join(explain(operand, env) for operand in operands)
        case LetRef(name, body) if holds(body, env):
            return f"{name} ({explain(body, env)})"
    return render(condition, env)


def render(condition: Condition, env: Env | None = None) -> str:
    """Render a whole condition, with the values from `env` when given."""

    def value_of(metric: str, against: MetricValue = None) -> str:
        if env is None:
            return metric
        return f"{metric}={format_value(env[metric], against)}"

    match condition:
        case Compare(metric, op, constant, None):
            return f"{value_of(metric, constant)} {op} {literal(constant)}"
        case Compare(metric, op, _, cutoff):
            assert cutoff is not None
            if env is None:
                return f"{metric} {op} {cutoff}"
            limit = env[cutoff]
            return f"{value_of(metric, limit)} {op} {cutoff}={format_value(limit)}"
        case IsIn(metric, values, negated):
            listed = ", ".join(literal(value) for value in values)
            return f"{value_of(metric)} {'not in' if negated else 'in'} [{listed}]"
        case Contains(metric, member):
            return f"{value_of(metric)} contains {literal(member)}"
        case IsNull(metric, negated):
            return f"{value_of(metric)} is {'not null' if negated else 'null'}"
        case Truth(metric):
            return value_of(metric)
        case LetRef(name, _):
            return name
        case Not(Truth(metric)) if env is not None and env[metric] is not True:
            return value_of(metric)  # "has_ordered=false" reads better than "not has_ordered"
        case Not(operand):
            inner = render(operand, env)
            return f"not {inner}" if isinstance(operand, Truth | LetRef) else f"not ({inner})"
        case All(operands):
            return " and ".join(
                f"({render(operand, env)})" if isinstance(operand, AnyOf) else render(operand, env)
                for operand in operands
            )
        case AnyOf(operands):
            return " or ".join(render(operand, env) for operand in operands)
    raise AssertionError(condition)


def literal(value: MetricValue) -> str:
    """A constant as the condition language writes it: a string bare when it reads as a
    name, else quoted."""
    if isinstance(value, str):
        if parser.NAME.match(value) and value not in parser.KEYWORDS:
            return value
        return f'"{value}"' if "'" in value else f"'{value}'"
    return format_value(value)


def property_types(condition: Condition) -> dict[str, MetricType]:
    """The type each property of a bound `where` is tested as (for values of another type
    to read as null): strings, numbers or booleans, by the constants compared with."""
    found: dict[str, MetricType] = {}
    for atom in atoms(condition):
        constants: tuple[MetricValue, ...] = ()
        if isinstance(atom, Compare):
            constants = (atom.constant,)
        elif isinstance(atom, IsIn):
            constants = atom.values
        elif isinstance(atom, Truth):
            found[atom.metric] = MetricType.BOOL
        for constant in constants:
            if isinstance(constant, bool):
                found[atom.metric] = MetricType.BOOL
            elif isinstance(constant, str):
                found[atom.metric] = MetricType.STRING
            elif constant is not None:
                found[atom.metric] = MetricType.NUMBER
    return found


def depth(condition: Condition) -> int:
    """How deep the tree goes, through `let` bodies (without recursing, so any depth does)."""
    deepest = 0
    pending: list[tuple[Condition, int]] = [(condition, 1)]
    while pending:
        node, level = pending.pop()
        deepest = max(deepest, level)
        match node:
            case LetRef(_, body) | Not(body):
                pending.append((body, level + 1))
            case All(operands) | AnyOf(operands):
                pending.extend((operand, level + 1) for operand in operands)
    return deepest


def atoms(condition: Condition) -> Iterator[Atom]:
    """Every comparison in a condition, including those inside `let` references."""
    match condition:
        case LetRef(_, body):
            yield from atoms(body)
        case Not(operand):
            yield from atoms(operand)
        case All(operands) | AnyOf(operands):
            for operand in operands:
                yield from atoms(operand)
        case _:
            yield condition


def names(condition: Condition) -> frozenset[str]:
    """The metrics, scores and cut-offs a condition reads."""
    found = set()
    for atom in atoms(condition):
        found.add(atom.metric)
        if isinstance(atom, Compare) and atom.cutoff is not None:
            found.add(atom.cutoff)
    return frozenset(found)


def thresholds(condition: Condition) -> dict[str, set[Number]]:
    """The numeric constants each metric is compared with: where its truth values can flip."""
    found: dict[str, set[Number]] = {}
    for atom in atoms(condition):
        if isinstance(atom, Compare | IsIn):
            constants = (atom.constant,) if isinstance(atom, Compare) else atom.values
            for constant in constants:
                if isinstance(constant, int | float | Decimal) and not isinstance(constant, bool):
                    found.setdefault(atom.metric, set()).add(constant)
    return found
