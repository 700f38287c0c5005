"""Loading definitions from YAML: structure, names, conditions, then coverage.

Every problem found is collected, so an analyst sees them all at once in one
`DefinitionError`, each naming its dimension and rule.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import yaml

from shared.segmentation import conditions, parser
from shared.segmentation.audiences import Audience, dependency_order
from shared.segmentation.coverage import check_dimension
from shared.segmentation.declarations import Retention, read_metrics, read_traits
from shared.segmentation.events import EventMetric
from shared.segmentation.metrics import (
    AGE,
    DIMENSION_METRICS,
    METRICS,
    Metric,
    MetricType,
    Number,
    event_metric_contract,
    trait_metric,
)
from shared.segmentation.model import (
    CutoffSpec,
    DefinitionError,
    Definitions,
    Dimension,
    Problem,
    ScoreSpec,
    SegmentRule,
    TimeDependence,
)
from shared.segmentation.traits import TraitKind

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOP_LEVEL_KEYS = frozenset(
    {"description", "traits", "metrics", "cutoffs", "scores", "dimensions", "audiences"}
)
_DIMENSION_KEYS = frozenset({"description", "let", "segments"})
_SEGMENT_KEYS = frozenset({"when", "description"})
_MAX_DEPTH = 100  # of a bound condition; recursion in evaluation stays far from the limit


def load_definitions(text: str, *, retention: Retention | None = None) -> Definitions:
    """Parse and validate a definitions YAML document; raises `DefinitionError`.

    `retention` maps a source ("interactions") to how long ingest keeps its rows and the
    setting that says so: a declared metric's window longer than that is refused. Stored
    versions are loaded without it, so a later, shorter retention never unloads them."""
    data, problems = _read_yaml(text)
    if problems:
        raise DefinitionError(problems)
    builder = _Builder(retention)
    definitions = builder.build(data, text)
    if builder.problems or definitions is None:
        raise DefinitionError(builder.problems)
    coverage = [
        problem
        for dimension in definitions.dimensions
        for problem in check_dimension(
            dimension, definitions.cutoffs, definitions.scores, definitions.declared_metrics
        )
    ]
    if coverage:
        raise DefinitionError(coverage)
    return definitions


@functools.cache
def default_definitions() -> Definitions:
    """The definitions shipped with the package (`definitions/default.yaml`)."""
    source = resources.files("shared.segmentation").joinpath("definitions/default.yaml")
    return load_definitions(source.read_text(encoding="utf-8"))


def _read_yaml(text: str) -> tuple[Any, list[Problem]]:
    problems: list[Problem] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
        if root is not None:
            _find_duplicate_keys(root, (), problems)
    except yaml.YAMLError as error:
        return None, [Problem(None, None, f"YAML syntax error: {error}")]
    except RecursionError:
        # PyYAML composes recursively: a document sent to the API can nest past the stack.
        return None, [Problem(None, None, "the document nests too deeply to be definitions")]
    return data, problems


def _find_duplicate_keys(node: yaml.Node, path: tuple[str, ...], problems: list[Problem]) -> None:
    """PyYAML silently keeps the last of two equal keys; a duplicated segment name must be an
    error instead, so the composed node tree is checked before the data is used."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _find_duplicate_keys(item, path, problems)
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in first_line:
            lines = f"lines {first_line[key]} and {line}"
            if len(path) == 3 and path[0] == "dimensions" and path[2] == "segments":
                problems.append(Problem(path[1], key, f"duplicate segment name {key!r} ({lines})"))
            elif path == ("dimensions",):
                problems.append(Problem(key, None, f"duplicate dimension name {key!r} ({lines})"))
            elif path == ("audiences",):
                problem = Problem(None, f"audience {key}", f"duplicate audience name ({lines})")
                problems.append(problem)
            else:
                where = ".".join((*path, key))
                problems.append(Problem(None, None, f"duplicate key {where!r} ({lines})"))
        else:
            first_line[key] = line
        _find_duplicate_keys(value_node, (*path, key), problems)


def _content_hash(data: Any) -> str:
    # Key order is kept: rule order is the (documented) tie-break and part of the content.
    canonical = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


class _Builder:
    def __init__(self, retention: Retention | None = None) -> None:
        self.problems: list[Problem] = []
        self.retention = retention
        self.metrics: Mapping[str, Metric] = METRICS  # built-in, traits and declared

    def _problem(self, dimension: str | None, rule: str | None, message: str) -> None:
        self.problems.append(Problem(dimension, rule, message))

    def _mapping(self, value: object, where: str, dimension: str | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._problem(dimension, None, f"{where} must be a mapping")
            return {}
        return value

    def _check_keys(
        self,
        data: Mapping[str, Any],
        allowed: frozenset[str],
        where: str,
        dimension: str | None = None,
        rule: str | None = None,
    ) -> None:
        for key in data:
            if key not in allowed:
                hint = " (versions are assigned when definitions are stored)" * (key == "version")
                expected = ", ".join(sorted(allowed))
                self._problem(
                    dimension, rule, f"unknown key {key!r} in {where}{hint}; expected: {expected}"
                )

    def _check_name(self, name: object, kind: str, dimension: str | None = None) -> bool:
        if isinstance(name, str) and _NAME.match(name) and name not in parser.KEYWORDS:
            return True
        self._problem(
            dimension,
            None,
            f"{kind} name {name!r} must be an identifier (letters, digits, _) and not a keyword",
        )
        return False

    def build(self, data: Any, source: str) -> Definitions | None:
        top = self._mapping(data, "the document")
        self._check_keys(top, _TOP_LEVEL_KEYS, "the document")
        custom_traits = read_traits(self._mapping(top.get("traits"), "traits"), self.problems)
        event_metrics = read_metrics(
            self._mapping(top.get("metrics"), "metrics"), self.retention, self.problems
        )
        declared = self._declared(custom_traits, event_metrics)
        self.metrics = {**METRICS, **declared}
        scores = self._scores(self._mapping(top.get("scores"), "scores"))
        cutoffs = self._cutoffs(self._mapping(top.get("cutoffs"), "cutoffs"), scores)
        metric_types = {name: metric.type for name, metric in self.metrics.items()}
        metric_types.update({name: MetricType.SCORE for name in scores})
        raw_dimensions = self._mapping(top.get("dimensions"), "dimensions")
        for name in raw_dimensions:
            if name in declared:
                self._problem(
                    name,
                    None,
                    f"dimension {name!r} has the name of a declared {_noun(name, custom_traits)}",
                )
        if top.get("dimensions") in (None, {}):
            self._problem(None, None, "at least one dimension is required under 'dimensions'")
        dimensions = []
        for name, raw in raw_dimensions.items():
            if self._check_name(name, "dimension", name):
                dimension = self._dimension(name, raw, metric_types, cutoffs)
                if dimension is not None:
                    dimensions.append(dimension)
        audiences = self._audiences(
            self._mapping(top.get("audiences"), "audiences"), dimensions, metric_types, cutoffs
        )
        if self.problems:
            return None
        referenced = frozenset().union(*(d.metrics for d in dimensions))
        referenced |= frozenset().union(*(a.metrics for a in audiences))
        return Definitions(
            description=str(top.get("description", "")),
            dimensions=tuple(dimensions),
            cutoffs=cutoffs,
            scores=scores,
            content_hash=_content_hash(data),
            source=source,
            referenced_metrics=referenced,
            time_dependences=_time_dependences(
                (*dimensions, *audiences), scores, referenced, self.metrics
            ),
            event_metrics=event_metrics,
            declared_metrics=declared,
            custom_traits=custom_traits,
            audiences=tuple(audiences),
        )

    def _declared(
        self, traits: Mapping[str, TraitKind], event_metrics: Mapping[str, EventMetric]
    ) -> dict[str, Metric]:
        """The contracts of custom traits and declared metrics; names must be new."""
        declared: dict[str, Metric] = {}
        for name, kind in traits.items():
            if name in METRICS:
                self._problem(None, None, f"trait {name!r} has the name of a built-in metric")
            else:
                declared[name] = trait_metric(name, kind, f"custom trait ({kind})")
        for name, event in event_metrics.items():
            if name in METRICS:
                self._problem(None, None, f"metric {name!r} has the name of a built-in metric")
            elif name in declared:
                self._problem(None, None, f"metric {name!r} has the name of a declared trait")
            else:
                declared[name] = event_metric_contract(event)
        return declared

    def _scores(self, raw: dict[str, Any]) -> dict[str, ScoreSpec]:
        scores = {}
        for name, spec in raw.items():
            where = f"score {name!r}"
            if not self._check_name(name, "score") or not isinstance(spec, dict):
                self._problem(None, None, f"{where} must be a mapping with metric, buckets, better")
                continue
            self._check_keys(spec, frozenset({"metric", "buckets", "better"}), where)
            if name in self.metrics:
                self._problem(None, None, f"{where} has the name of a metric")
            metric = str(spec.get("metric"))
            buckets = spec.get("buckets", 5)
            better = spec.get("better", "higher")
            if metric not in self.metrics or not self.metrics[metric].type.is_number:
                self._problem(
                    None, None, f"{where}: metric must be a numeric metric, got {metric!r}"
                )
            elif (
                not isinstance(buckets, int) or isinstance(buckets, bool) or not 2 <= buckets <= 10
            ):
                self._problem(None, None, f"{where}: buckets must be an integer from 2 to 10")
            elif better not in ("higher", "lower"):
                self._problem(None, None, f"{where}: better must be 'higher' or 'lower'")
            else:
                scores[name] = ScoreSpec(name, metric, buckets, better == "higher")
        return scores

    def _cutoffs(
        self, raw: dict[str, Any], scores: Mapping[str, ScoreSpec]
    ) -> dict[str, CutoffSpec]:
        cutoffs = {}
        for name, spec in raw.items():
            where = f"cut-off {name!r}"
            if not self._check_name(name, "cut-off") or not isinstance(spec, dict):
                self._problem(None, None, f"{where} must be a mapping")
                continue
            self._check_keys(spec, frozenset({"metric", "top_percent", "value"}), where)
            if name in self.metrics or name in scores:
                self._problem(None, None, f"{where} has the name of a metric")
            metric = spec.get("metric")
            known = self.metrics
            if metric is not None and (metric not in known or not known[metric].type.is_number):
                self._problem(
                    None, None, f"{where}: metric must be a numeric metric, got {metric!r}"
                )
                continue
            top_percent, value = _number(spec.get("top_percent")), _number(spec.get("value"))
            if ("top_percent" in spec) == ("value" in spec):
                self._problem(None, None, f"{where}: give exactly one of top_percent or value")
            elif "value" in spec:
                if value is None:
                    self._problem(None, None, f"{where}: value must be a number")
                else:
                    typed = self.metrics[metric].type.coerce(value) if metric else value
                    cutoffs[name] = CutoffSpec(name, metric, value=typed)
            elif metric is None:
                self._problem(None, None, f"{where}: a top_percent cut-off needs a metric")
            elif top_percent is None or not 0 < top_percent <= 100:
                self._problem(None, None, f"{where}: top_percent must be a number in (0, 100]")
            else:
                cutoffs[name] = CutoffSpec(name, metric, top_percent=top_percent)
        return cutoffs

    def _dimension(
        self,
        name: str,
        raw: Any,
        metric_types: Mapping[str, MetricType],
        cutoffs: Mapping[str, CutoffSpec],
    ) -> Dimension | None:
        body = self._mapping(raw, f"dimension {name!r}", name)
        self._check_keys(body, _DIMENSION_KEYS, f"dimension {name!r}", name)
        raw_segments = self._mapping(body.get("segments"), "segments", name)
        if not raw_segments:
            self._problem(name, None, "a dimension needs at least one segment under 'segments'")
        segment_names = tuple(str(segment) for segment in raw_segments)
        for segment in raw_segments:
            self._check_name(segment, "segment", name)
        scope = conditions.Scope(
            dimension=name,
            metric_types=metric_types,
            segments=segment_names,
            cutoffs={
                c.name: self.metrics[c.metric].type if c.metric else None for c in cutoffs.values()
            },
            lets={},
        )
        lets: dict[str, conditions.Condition] = {}
        for let_name, text in self._mapping(body.get("let"), "let", name).items():
            rule = f"let {let_name}"
            if not self._check_name(let_name, "let", name):
                continue
            if let_name in metric_types or let_name in cutoffs:
                self._problem(
                    name, rule, f"{let_name!r} is already the name of a metric or cut-off"
                )
                continue
            # Each let sees only the lets above it, so references cannot form a cycle.
            scope = _with_lets(scope, lets)
            condition = self._condition(name, rule, text, scope)
            # A let with problems still gets a (never evaluated) placeholder, so its uses
            # are not reported again as unknown metrics.
            lets[let_name] = conditions.Truth(let_name) if condition is None else condition
        scope = _with_lets(scope, lets)
        rules = []
        for segment, spec in raw_segments.items():
            text, description = self._segment_spec(name, str(segment), spec)
            condition = self._condition(name, str(segment), text, scope)
            if condition is not None:
                predicate = conditions.compile_condition(condition)
                names = conditions.names(condition)
                source = " ".join(str(text).split())
                rules.append(
                    SegmentRule(str(segment), description, source, condition, names, predicate)
                )
        if len(rules) != len(raw_segments):
            return None
        description = body.get("description", "")
        return _dimension(name, str(description), tuple(rules), lets)

    def _audiences(
        self,
        raw: dict[str, Any],
        dimensions: list[Dimension],
        metric_types: Mapping[str, MetricType],
        cutoffs: Mapping[str, CutoffSpec],
    ) -> list[Audience]:
        """Audiences, each after those it references; a cycle is a problem naming it."""
        if not raw:
            return []
        segments = {dimension.name: dimension.segments for dimension in dimensions}
        for dimension in segments:
            # Audiences read a dimension by its name, so it must not stand for a metric too.
            if dimension in metric_types or dimension in cutoffs:
                self._problem(
                    dimension,
                    None,
                    f"{dimension!r} is the name of a metric or cut-off; audiences read "
                    "dimensions by name",
                )
        names = []
        for name in raw:
            rule = f"audience {name}"
            if not self._check_name(name, "audience"):
                continue
            if name in segments:
                self._problem(None, rule, f"{name!r} is already the name of a dimension")
            elif name in metric_types or name in cutoffs:
                self._problem(None, rule, f"{name!r} is already the name of a metric or cut-off")
            else:
                names.append(str(name))
        types = {n: t for n, t in metric_types.items() if n not in DIMENSION_METRICS}
        types.update({dimension: MetricType.SEGMENT for dimension in segments})
        types.update({name: MetricType.BOOL for name in names})
        built = []
        for name in names:
            rule = f"audience {name}"
            scope = conditions.Scope(
                dimension=rule,
                metric_types=types,
                segments=(),
                cutoffs={
                    c.name: self.metrics[c.metric].type if c.metric else None
                    for c in cutoffs.values()
                },
                lets={},
                segment_values=segments,
            )
            text, description = self._audience_spec(name, raw[name])
            condition = self._condition(None, rule, text, scope)
            if condition is not None:
                built.append(_audience(name, description, str(text), condition, segments, names))
        ordered, cycles = dependency_order(built)
        for cycle in cycles:
            if len(cycle) == 2:
                message = f"audience {cycle[0]!r} references itself"
            else:
                message = "audiences reference each other in a cycle: " + " -> ".join(cycle)
            self._problem(None, f"audience {cycle[0]}", message)
        return ordered

    def _audience_spec(self, name: str, spec: Any) -> tuple[Any, str]:
        if isinstance(spec, dict):
            self._check_keys(spec, _SEGMENT_KEYS, f"audience {name!r}", None, f"audience {name}")
            return spec.get("when"), str(spec.get("description", ""))
        return spec, ""

    def _segment_spec(self, dimension: str, segment: str, spec: Any) -> tuple[Any, str]:
        if isinstance(spec, dict):
            self._check_keys(spec, _SEGMENT_KEYS, f"segment {segment!r}", dimension, segment)
            return spec.get("when"), str(spec.get("description", ""))
        return spec, ""

    def _condition(
        self, dimension: str | None, rule: str, text: Any, scope: conditions.Scope
    ) -> conditions.Condition | None:
        if not isinstance(text, str):
            self._problem(dimension, rule, f"the condition must be a string, got {text!r}")
            return None
        text = " ".join(text.split())
        try:
            syntax = parser.parse(text)
        except parser.ConditionSyntaxError as error:
            self._problem(
                dimension,
                rule,
                f"syntax error at column {error.column} of {text!r}: {error.message}",
            )
            return None
        condition, problems = conditions.bind(syntax, scope)
        for problem in problems:
            self._problem(
                dimension, rule, f"column {problem.column} of {text!r}: {problem.message}"
            )
        if condition is not None and conditions.depth(condition) > _MAX_DEPTH:
            # Lets that use lets can nest without bound; evaluation recurses through them.
            self._problem(
                dimension, rule, f"{text!r} nests more than {_MAX_DEPTH} deep, through its lets"
            )
            return None
        return condition


def _with_lets(
    scope: conditions.Scope, lets: Mapping[str, conditions.Condition]
) -> conditions.Scope:
    return conditions.Scope(
        scope.dimension, scope.metric_types, scope.segments, scope.cutoffs, dict(lets)
    )


def _audience(
    name: str,
    description: str,
    text: str,
    condition: conditions.Condition,
    segments: Mapping[str, tuple[str, ...]],
    audiences: list[str],
) -> Audience:
    read = conditions.names(condition)
    dimensions = read & segments.keys()
    referenced = read & frozenset(audiences)
    cutoff_refs: dict[str, set[str]] = {}
    for atom in conditions.atoms(condition):
        if isinstance(atom, conditions.Compare) and atom.cutoff is not None:
            cutoff_refs.setdefault(atom.metric, set()).add(atom.cutoff)
    return Audience(
        name=name,
        description=description,
        source=" ".join(text.split()),
        condition=condition,
        metrics=read - dimensions - referenced,
        dimensions=frozenset(dimensions),
        audiences=referenced,
        thresholds={
            metric: frozenset(values) for metric, values in conditions.thresholds(condition).items()
        },
        cutoff_refs={metric: frozenset(names) for metric, names in cutoff_refs.items()},
        predicate=conditions.compile_condition(condition),
    )


def _dimension(
    name: str,
    description: str,
    rules: tuple[SegmentRule, ...],
    lets: Mapping[str, conditions.Condition],
) -> Dimension:
    metrics: set[str] = set()
    thresholds: dict[str, set[Number]] = {}
    cutoff_refs: dict[str, set[str]] = {}
    for rule in rules:
        metrics.update(rule.metrics)
        for atom in conditions.atoms(rule.condition):
            if isinstance(atom, conditions.Compare) and atom.cutoff is not None:
                cutoff_refs.setdefault(atom.metric, set()).add(atom.cutoff)
        for metric, constants in conditions.thresholds(rule.condition).items():
            thresholds.setdefault(metric, set()).update(constants)
    return Dimension(
        name=name,
        description=description,
        rules=rules,
        lets=lets,
        metrics=frozenset(metrics),
        thresholds={metric: frozenset(values) for metric, values in thresholds.items()},
        cutoff_refs={metric: frozenset(names) for metric, names in cutoff_refs.items()},
    )


def _noun(name: str, traits: Mapping[str, TraitKind]) -> str:
    return "trait" if name in traits else "metric"


def _time_dependences(
    dimensions: Sequence[Dimension | Audience],
    scores: Mapping[str, ScoreSpec],
    referenced: frozenset[str],
    metrics: Mapping[str, Metric],
) -> tuple[TimeDependence, ...]:
    """`dimensions`: the dimensions, then the audiences in evaluation order; bit i of a
    mask is the i-th of them."""
    dependences = []
    for name, metric in metrics.items():
        # A windowed `last` also turns null when its event leaves the window: `is null`
        # flips then, with no constant to cross.
        becomes_null = metric.event is not None and metric.event.window is not None
        if metric.anchor is None and not metric.leaves_window and name != AGE:
            continue
        constants = sorted(set().union(*(d.thresholds.get(name, ()) for d in dimensions)))
        cutoffs = sorted(set().union(*(d.cutoff_refs.get(name, ()) for d in dimensions)))
        used_scores = sorted(
            s for s, spec in scores.items() if spec.metric == name and s in referenced
        )
        read = becomes_null and metric.anchor is not None and name in referenced
        if constants or cutoffs or used_scores or read:
            mask = 0
            for index, dimension in enumerate(dimensions):
                if dimension.metrics & {name, *used_scores}:
                    mask |= 1 << index
            dependences.append(
                TimeDependence(name, tuple(constants), tuple(cutoffs), tuple(used_scores), mask)
            )
    return tuple(dependences)
