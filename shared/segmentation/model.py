"""The loaded, validated form of segment definitions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from shared.segmentation.audiences import Audience
from shared.segmentation.conditions import Condition, Env, Predicate, explain
from shared.segmentation.events import EventMetric
from shared.segmentation.metrics import METRICS, Metric, Number
from shared.segmentation.traits import TraitKind


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definitions file, located by dimension and rule when it can be."""

    dimension: str | None
    rule: str | None
    message: str

    def __str__(self) -> str:
        where = "/".join(part for part in (self.dimension, self.rule) if part)
        return f"{where}: {self.message}" if where else self.message


class DefinitionError(ValueError):
    """Definitions that cannot be used; `problems` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"- {problem}" for problem in self.problems)
        super().__init__(f"invalid segment definitions ({len(self.problems)} problems):\n{lines}")


@dataclass(frozen=True, slots=True)
class CutoffSpec:
    """A named threshold: an absolute `value`, or the lowest value reached by the
    `top_percent` of customers with a positive `metric` (resolved by the population stats)."""

    name: str
    metric: str | None
    top_percent: Decimal | None = None
    value: Number | None = None

    @property
    def is_percentile(self) -> bool:
        return self.top_percent is not None


@dataclass(frozen=True, slots=True)
class ScoreSpec:
    """A score metric: 1..`buckets` by population quantiles of `metric`; bucket
    `buckets` is the best one (the highest values, or the lowest if not `higher_is_better`)."""

    name: str
    metric: str
    buckets: int
    higher_is_better: bool


@dataclass(frozen=True, slots=True)
class SegmentRule:
    """One segment of a dimension and the condition that puts a customer in it."""

    name: str
    description: str
    source: str
    condition: Condition
    metrics: frozenset[str]  # metrics, scores and cut-offs the condition reads
    predicate: Predicate = field(repr=False, compare=False)

    def explain(self, env: Env) -> str:
        """The reason, with actual values, for a customer this rule matches."""
        return explain(self.condition, env)


@dataclass(frozen=True, slots=True)
class Dimension:
    """A set of mutually exclusive segments that together cover every customer."""

    name: str
    description: str
    rules: tuple[SegmentRule, ...]
    lets: Mapping[str, Condition]
    metrics: frozenset[str]  # every metric, score and cut-off referenced, through lets too
    thresholds: Mapping[str, frozenset[Number]]  # metric -> constants it is compared with
    cutoff_refs: Mapping[str, frozenset[str]]  # metric -> cut-offs it is compared with
    segments: tuple[str, ...] = field(init=False)
    uses_previous: bool = field(init=False)  # a state machine: rules look at `previous`

    def __post_init__(self) -> None:
        # Derived once here because evaluate() reads them for every customer.
        object.__setattr__(self, "segments", tuple(rule.name for rule in self.rules))
        uses_previous = "previous" in self.metrics or "days_in_segment" in self.metrics
        object.__setattr__(self, "uses_previous", uses_previous)

    def match(self, env: Env) -> SegmentRule | None:
        """The first rule (in file order) that matches; validation makes it the only one."""
        for rule in self.rules:
            if rule.predicate(env):
                return rule
        return None

    def matches(self, env: Env) -> tuple[SegmentRule, ...]:
        """Every rule that matches (validation expects exactly one)."""
        return tuple(rule for rule in self.rules if rule.predicate(env))


@dataclass(frozen=True, slots=True)
class TimeDependence:
    """A metric that changes as time passes (days-since or rolling window) and the values
    whose crossing can flip a comparison: constants, cut-offs, edges of scores of it."""

    metric: str
    constants: tuple[Number, ...]
    cutoffs: tuple[str, ...]
    scores: tuple[str, ...]
    # Bit i: dimension i reads the metric, or a score of it; bit len(dimensions) + j: the
    # j-th audience (in evaluation order) does.
    dimension_mask: int


@dataclass(frozen=True, slots=True, eq=False)
class Definitions:
    """Validated definitions. `content_hash` identifies the content (not its formatting or
    comments), so versions of equal content (a rollback) share one stored content."""

    description: str
    dimensions: tuple[Dimension, ...]
    cutoffs: Mapping[str, CutoffSpec]
    scores: Mapping[str, ScoreSpec]
    content_hash: str
    source: str = field(repr=False)
    referenced_metrics: frozenset[str] = field(repr=False)
    # For the next-change search; days_in_segment is per dimension, so it is not here.
    time_dependences: tuple[TimeDependence, ...] = field(repr=False)
    # Declared event metrics (`metrics:`), by name; the built-in ones are in METRICS.
    event_metrics: Mapping[str, EventMetric] = field(default_factory=dict, repr=False)
    # In evaluation order: each after the audiences it references, file order otherwise.
    audiences: tuple[Audience, ...] = ()
    # The contracts of the declared metrics and custom traits (`traits:`), by name.
    declared_metrics: Mapping[str, Metric] = field(default_factory=dict, repr=False)
    custom_traits: Mapping[str, TraitKind] = field(default_factory=dict, repr=False)

    def metric(self, name: str) -> Metric:
        """The contract of a metric these definitions can read: built-in, a trait, or
        declared (KeyError if none)."""
        found = METRICS.get(name)
        return found if found is not None else self.declared_metrics[name]

    def dimension(self, name: str) -> Dimension:
        """The dimension called `name` (KeyError if there is none)."""
        for dimension in self.dimensions:
            if dimension.name == name:
                return dimension
        raise KeyError(name)

    def audience(self, name: str) -> Audience:
        """The audience called `name` (KeyError if there is none)."""
        for audience in self.audiences:
            if audience.name == name:
                return audience
        raise KeyError(name)

    @property
    def population_metrics(self) -> frozenset[str]:
        """The metrics `compute_population_stats` needs a sample of."""
        names = {spec.metric for spec in self.scores.values()}
        names.update(
            spec.metric for spec in self.cutoffs.values() if spec.is_percentile and spec.metric
        )
        return frozenset(names)
