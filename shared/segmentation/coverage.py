"""Coverage checks: within a dimension, exactly one rule must match every customer.

Conditions compare metrics with constants, so a rule's truth only changes where a metric
crosses one of its constants. For each metric a dimension references we take
representative values (each constant, just below and just above it, 0, null; both
booleans; every segment and null for `previous`; every score), enumerate the cartesian
product (falling back to a seeded random sample above `CARTESIAN_CAP` points), realize
each combination as a synthetic customer (see `synthetic`), and evaluate every rule.
Percentile cut-offs are unknown until the population is seen, so they are tried in three
arrangements: distinct values, all equal, and unresolved (an empty population).

Traits and declared event metrics are free axes: their representative values (null, each
constant and either side of it, each string compared and one other, the sets of the values
`contains` tests) are set directly rather than realized, so they are not linked to the
built-in metrics (a declared count of orders may exceed orders_total in a witness).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from shared.segmentation.conditions import Compare, Contains, IsIn, atoms
from shared.segmentation.metrics import (
    FACT_METRICS,
    METRICS,
    MICROSECONDS_PER_DAY,
    TRAIT_METRICS,
    Metric,
    MetricType,
    MetricValue,
    Number,
    compute_fact_metrics,
    crossing_offsets,
    format_value,
)
from shared.segmentation.model import CutoffSpec, Dimension, Problem, ScoreSpec
from shared.segmentation.synthetic import REFERENCE_NOW, realize

CARTESIAN_CAP = 20_000
SAMPLE_SIZE = 5_000
_SEED = 1729
_CENT = Decimal("0.01")
_HUNDREDTH_DAY_US = MICROSECONDS_PER_DAY // 100
_CUTOFF_STEP: Mapping[MetricType, Number] = {
    MetricType.MONEY: Decimal(100),
    MetricType.COUNT: 10,
    MetricType.DAYS: 10.0,
    MetricType.YEARS: 10,
    MetricType.NUMBER: 10,
}
_UNRESOLVED: Mapping[MetricType, Number] = {
    MetricType.MONEY: Decimal("Infinity"),
    MetricType.COUNT: math.inf,
    MetricType.DAYS: math.inf,
    MetricType.YEARS: math.inf,
    MetricType.NUMBER: math.inf,
}
_OTHER_STRING = "\x00other"  # a string no condition compares with
_SUBSETS_UP_TO = 3  # members `contains` tests: every subset of up to this many

Env = dict[str, MetricValue]


def check_dimension(
    dimension: Dimension,
    cutoffs: Mapping[str, CutoffSpec],
    scores: Mapping[str, ScoreSpec],
    declared: Mapping[str, Metric] | None = None,
) -> list[Problem]:
    """Overlaps, gaps and same-instant double steps in one dimension, each with a witness.
    `declared`: the contracts of the definitions' declared metrics and custom traits."""
    checker = _Checker(dimension, cutoffs, scores, declared or {})
    for scenario in checker.scenarios():
        checker.run(scenario)
    return checker.problems


class _Checker:
    def __init__(
        self,
        dimension: Dimension,
        cutoffs: Mapping[str, CutoffSpec],
        scores: Mapping[str, ScoreSpec],
        declared: Mapping[str, Metric],
    ) -> None:
        self.dimension = dimension
        self.metrics: Mapping[str, Metric] = {**METRICS, **declared}
        self.cutoffs = {name: cutoffs[name] for name in dimension.metrics if name in cutoffs}
        self.scores = [scores[name] for name in sorted(dimension.metrics) if name in scores]
        self.problems: list[Problem] = []
        self._reported: set[tuple[str, ...]] = set()
        self._realized: dict[tuple[tuple[str, MetricValue], ...], Env | None] = {}
        # Facts metrics to enumerate: those referenced, plus the inputs of referenced scores
        # when they can be null (a score is null exactly when its input is).
        metrics = self.metrics
        wanted = {name for name in dimension.metrics if name in metrics}
        wanted.update(
            spec.metric
            for spec in self.scores
            if metrics[spec.metric].nullable or spec.metric in declared
        )
        wanted -= {"previous", "days_in_segment"}
        free = {name for name in wanted if name in TRAIT_METRICS or name in declared}
        self.targets = [name for name in METRICS if name in wanted - free and name in FACT_METRICS]
        self.free = sorted(free)
        self.strings, self.members = _string_constants(dimension)
        self.shown = [
            *self.targets,
            *self.free,
            *(spec.name for spec in self.scores),
            *(name for name in ("previous", "days_in_segment") if name in dimension.metrics),
            *self.cutoffs,
        ]
        self.shown = [name for name in self.shown if name in dimension.metrics]

    def scenarios(self) -> list[dict[str, Number]]:
        fixed = {name: spec.value for name, spec in self.cutoffs.items() if spec.value is not None}
        percentile = [spec for spec in self.cutoffs.values() if spec.is_percentile]
        if not percentile:
            return [fixed]
        distinct, equal, unresolved = dict(fixed), dict(fixed), dict(fixed)
        by_metric: dict[str, list[CutoffSpec]] = {}
        for spec in percentile:
            assert spec.metric is not None
            by_metric.setdefault(spec.metric, []).append(spec)
        for metric, specs in by_metric.items():
            type_ = self.metrics[metric].type
            step = _CUTOFF_STEP[type_]
            constants = self.dimension.thresholds.get(metric, frozenset())
            base = type_.coerce(max((c for c in constants if c > 0), default=0))
            # Percentile cut-offs are among positive values, and a smaller top share has
            # the higher (or equal) cut-off.
            ordered = sorted(specs, key=lambda spec: spec.top_percent or 0, reverse=True)
            for rank, spec in enumerate(ordered, start=1):
                distinct[spec.name] = type_.coerce(base + step * rank)  # type: ignore[operator]
                equal[spec.name] = type_.coerce(base + step)  # type: ignore[operator]
                unresolved[spec.name] = _UNRESOLVED[type_]
        return [distinct, equal, unresolved]

    def run(self, scenario: Mapping[str, Number]) -> None:
        axes: list[Sequence[Any]] = [self._representatives(name, scenario) for name in self.targets]
        axes.extend(self._free_representatives(name, scenario) for name in self.free)
        axes.extend(_score_values(spec) for spec in self.scores)
        axes.append(self._previous_pairs())
        realized, free = len(self.targets), len(self.targets) + len(self.free)
        for point in _points(axes):
            facts_env = self._realize(tuple(zip(self.targets, point[:realized], strict=True)))
            if facts_env is None:
                continue
            env = dict(facts_env)
            env.update(zip(self.free, point[realized:free], strict=True))
            env.update(scenario)
            if not self._set_scores(env, point[free:-1]):
                continue
            previous_pair = point[-1]
            assert isinstance(previous_pair, tuple)
            env["previous"], env["days_in_segment"] = previous_pair
            self._check(env)

    def _realize(self, targets: tuple[tuple[str, MetricValue], ...]) -> Env | None:
        if targets not in self._realized:
            facts = realize(dict(targets))
            self._realized[targets] = (
                None if facts is None else compute_fact_metrics(facts, REFERENCE_NOW)
            )
        return self._realized[targets]

    def _set_scores(self, env: Env, values: Sequence[MetricValue]) -> bool:
        for spec, value in zip(self.scores, values, strict=True):
            if (env.get(spec.metric) is None) != (value is None):
                return False  # a score is null exactly when its input is
            env[spec.name] = value
        return True

    def _check(self, env: Env) -> None:
        dimension = self.dimension
        matches = dimension.matches(env)
        if not matches:
            self._report(("gap",), f"no rule matches when {self._witness(env)}")
            return
        if len(matches) > 1:
            first, second = matches[0].name, matches[1].name
            self._report(
                ("overlap", first, second),
                f"rules {first} and {second} both match when {self._witness(env)}",
            )
            return
        entered = matches[0].name
        if dimension.uses_previous and env["previous"] != entered:
            after = dict(env, previous=entered, days_in_segment=0.0)
            following = dimension.matches(after)
            if len(following) == 1 and following[0].name != entered:
                self._report(
                    ("unstable", entered, following[0].name),
                    f"rule {entered} matches when {self._witness(env)}, but once in {entered} "
                    f"(days_in_segment=0) rule {following[0].name} matches at the same instant; "
                    f"a segment must hold when it is entered",
                )

    def _report(self, key: tuple[str, ...], message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.problems.append(Problem(self.dimension.name, None, message))

    def _witness(self, env: Env) -> str:
        return ", ".join(f"{name}={format_value(env[name])}" for name in self.shown)

    def _free_representatives(
        self, metric: str, scenario: Mapping[str, Number]
    ) -> list[MetricValue]:
        spec = self.metrics[metric]
        nulls: list[MetricValue] = [None] if spec.nullable else []
        if spec.type is MetricType.STRING:
            return [*nulls, *sorted(self.strings.get(metric, ())), _OTHER_STRING]
        if spec.type is MetricType.STRINGS:
            members = sorted(self.members.get(metric, ()))
            if len(members) <= _SUBSETS_UP_TO:
                sets = [
                    tuple(chosen)
                    for size in range(len(members) + 1)
                    for chosen in itertools.combinations(members, size)
                ]
            else:
                sets = [(), *((member,) for member in members), tuple(members)]
            return [*nulls, *sets]
        if spec.type is MetricType.NUMBER:
            return [*nulls, *_number_representatives(self._constants(spec, scenario))]
        values = self._representatives(metric, scenario)
        if spec.type is MetricType.DAYS:
            return [v if v is None else v / MICROSECONDS_PER_DAY for v in values]  # type: ignore[operator]
        return values

    def _constants(self, spec: Metric, scenario: Mapping[str, Number]) -> list[Number]:
        # Linked metrics share their constants: with days_since_last_order < 90 and
        # days_since_first_order < 30, a first order 90 days ago must be a candidate too, or
        # "last order exactly 90 days ago" (which needs an older first order) never realizes.
        constants: set[Number] = set()
        for name in (*self.targets, *self.free):
            if self.metrics[name].type is spec.type:
                constants.update(self.dimension.thresholds.get(name, ()))
                refs = self.dimension.cutoff_refs.get(name, ())
                constants.update(scenario[ref] for ref in refs if ref in scenario)
        return sorted(c for c in constants if not _is_infinite(c))

    def _representatives(self, metric: str, scenario: Mapping[str, Number]) -> list[MetricValue]:
        spec = self.metrics[metric]
        constants: set[Number] = set()
        for name in (*self.targets, *self.free):
            if self.metrics[name].type is spec.type:
                constants.update(self.dimension.thresholds.get(name, ()))
                refs = self.dimension.cutoff_refs.get(name, ())
                constants.update(scenario[ref] for ref in refs if ref in scenario)
        finite = sorted(c for c in constants if not _is_infinite(c))
        values: list[MetricValue] = [None] if spec.nullable else []
        if spec.type is MetricType.BOOL:
            values.extend((False, True))
        elif spec.type is MetricType.DAYS:
            values.extend(_days_representatives(finite))
        elif spec.type is MetricType.MONEY:
            values.extend(_money_representatives(finite))
        else:
            values.extend(_count_representatives(finite))
        return values

    def _previous_pairs(self) -> list[tuple[str | None, float | None]]:
        if not self.dimension.uses_previous:
            return [(None, None)]
        days = [0]
        if "days_in_segment" in self.dimension.metrics:
            constants = sorted(self.dimension.thresholds.get("days_in_segment", ()))
            days = _days_representatives(constants)
        pairs: list[tuple[str | None, float | None]] = [(None, None)]
        for segment in self.dimension.segments:
            pairs.extend((segment, offset / MICROSECONDS_PER_DAY) for offset in days)
        return pairs


def _string_constants(
    dimension: Dimension,
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The strings each metric is compared with, and the members `contains` tests."""
    strings: dict[str, set[str]] = {}
    members: dict[str, set[str]] = {}
    for rule in dimension.rules:
        for atom in atoms(rule.condition):
            if isinstance(atom, Contains):
                members.setdefault(atom.metric, set()).add(atom.value)
            elif isinstance(atom, Compare | IsIn):
                values = (atom.constant,) if isinstance(atom, Compare) else atom.values
                found = {value for value in values if isinstance(value, str)}
                if found:
                    strings.setdefault(atom.metric, set()).update(found)
    return strings, members


def _number_representatives(constants: Sequence[Number]) -> list[float]:
    """Any number (a custom trait may be negative): at, below and above every constant."""
    points = sorted({float(c) for c in constants})
    gaps = [b - a for a, b in itertools.pairwise(points)]
    delta = min([0.5, *(gap / 3 for gap in gaps)])
    values = {0.0, (points[0] - 1) if points else -1.0}
    for constant in points:
        values.update((constant - delta, constant, constant + delta))
    return sorted(values)


def _is_infinite(value: Number) -> bool:
    return isinstance(value, float | Decimal) and not math.isfinite(value)


def _score_values(spec: ScoreSpec) -> list[MetricValue]:
    return [None, *range(1, spec.buckets + 1)]


def _days_representatives(constants: Sequence[Number]) -> list[int]:
    """Ages in microseconds: 0, and at, just below and just above every constant."""
    flips = sorted({offset for c in constants for offset in crossing_offsets(c)})
    gaps = [b - a for a, b in itertools.pairwise(flips) if b > a]
    delta = max(1, min([_HUNDREDTH_DAY_US, *(gap // 3 for gap in gaps)]))
    values = {0}
    for constant in constants:
        at_least, above = crossing_offsets(constant)
        values.update((at_least - delta, at_least, above + delta))
    return sorted(value for value in values if value >= 0)


def _money_representatives(constants: Sequence[Number]) -> list[Decimal]:
    decimals = sorted({Decimal(c) for c in constants})
    gaps = [b - a for a, b in itertools.pairwise(decimals)]
    delta = min([_CENT, *(gap / 3 for gap in gaps)])
    values = {Decimal(0)}
    for constant in decimals:
        values.update((constant - delta, constant, constant + delta))
    return sorted(value for value in values if value >= 0)


def _count_representatives(constants: Sequence[Number]) -> list[int]:
    values = {0}
    for constant in constants:
        floor = math.floor(constant)
        values.update((floor - 1, floor, floor + 1, math.ceil(constant)))
    return sorted(value for value in values if value >= 0)


def _points(axes: Sequence[Sequence[Any]]) -> Iterator[tuple[Any, ...]]:
    size = math.prod(len(axis) for axis in axes)
    if size <= CARTESIAN_CAP:
        yield from itertools.product(*axes)
        return
    rng = random.Random(_SEED)  # seeded: the same definitions always get the same verdict
    for _ in range(SAMPLE_SIZE):
        yield tuple(rng.choice(axis) for axis in axes)
