"""What the cut-offs of definitions stand for under given population stats, and rule
conditions rendered with those values in place of the cut-offs' names.

A name is replaced only where the bound condition compares against a cut-off: a segment of
the same name (`previous = vip_spend`) or a metric whose name contains a cut-off's name is
left as written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal

from shared.segmentation import parser
from shared.segmentation.conditions import All, AnyOf, Compare, Condition, Not
from shared.segmentation.metrics import Number
from shared.segmentation.model import CutoffSpec, Definitions
from shared.segmentation.population import PopulationStats

UNRESOLVED = "(unresolved)"


def cutoff_values(
    definitions: Definitions, population: PopulationStats | None
) -> dict[str, Number | None]:
    """Each cut-off's value: absolute, resolved by `population`, or None when unresolved."""
    return {
        name: spec.value if spec.value is not None else _resolved(spec, population)
        for name, spec in definitions.cutoffs.items()
    }


def _resolved(spec: CutoffSpec, population: PopulationStats | None) -> Number | None:
    return None if population is None else population.cutoffs.get(spec.name)


def exact(value: Number) -> str:
    """A number as written in a condition, every digit kept: a rounded cut-off could read as
    admitting a value it does not."""
    if isinstance(value, Decimal):
        text = f"{value.normalize():f}"
        return "0" if text == "-0" else text
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_cutoff(spec: CutoffSpec, value: Number | None) -> str:
    """A cut-off as the comparison that selects its customers: `spend_365d >= 428.28`."""
    shown = spec.name if value is None else exact(value)
    text = shown if spec.metric is None else f"{spec.metric} >= {shown}"
    return text if value is not None else f"{text} {UNRESOLVED}"


def resolve_condition(
    source: str, condition: Condition, values: Mapping[str, Number | None]
) -> str:
    """`source` (the rule's text, from which `condition` was bound) with each cut-off it
    compares against replaced by its value in `values`, or marked unresolved if it has none.

    Everything else stays as written; the parser's columns locate the cut-offs."""
    text = source
    # Right to left, so that each replacement leaves the columns before it valid.
    references = sorted(cutoff_references(parser.parse(source), condition), key=_column)
    for value in reversed(references):
        start = value.column - 1
        resolved = values.get(value.text)
        shown = f"{value.text} {UNRESOLVED}" if resolved is None else exact(resolved)
        text = text[:start] + shown + text[start + len(value.text) :]
    return text


def _column(value: parser.Value) -> int:
    return value.column


def cutoff_references(syntax: parser.Syntax, condition: Condition) -> Iterator[parser.Value]:
    """The values of `syntax` that its binding `condition` compares against as cut-offs.

    Binding maps the syntax tree node for node (a name on its own becomes a metric or a
    `let` reference, whose body is not in this text), so the two are walked together."""
    match syntax, condition:
        case parser.Comparison(_, _, value), Compare(cutoff=str()):
            yield value
        case parser.Negation(inner), Not(bound):
            yield from cutoff_references(inner, bound)
        case (parser.Conjunction(operands), All(bound)) | (
            parser.Disjunction(operands),
            AnyOf(bound),
        ):
            for operand, bound_operand in zip(operands, bound, strict=True):
                yield from cutoff_references(operand, bound_operand)
