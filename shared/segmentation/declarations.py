"""The `metrics:` and `traits:` sections of definitions: declared event metrics and custom
traits, each read into its spec and checked, every problem naming the metric or trait.

```yaml
traits:
  loyalty_points: number            # string | number | boolean | strings
metrics:
  email_clicks_14d:  {count: email_click, within: 14d}
  running_spend_90d: {sum: amount, where: "item.category = 'running'", within: 90d}
  skus_bought:       {distinct: item.sku, of: order_placed}
  last_login:        {last: login, within: 30d}
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from shared.events import INTERACTION_EVENT_TYPES
from shared.segmentation import conditions, parser
from shared.segmentation.events import (
    ITEM_PROPERTIES,
    ORDER_PROPERTIES,
    SUM_FIELDS,
    EventFilter,
    EventMetric,
    EventSource,
    MetricKind,
)
from shared.segmentation.metrics import MetricType
from shared.segmentation.model import Problem
from shared.segmentation.traits import BUILT_IN_TRAITS, TraitKind

# source -> (how long ingest keeps its rows, the setting that says so)
Retention = Mapping[str, tuple[timedelta, str]]

ORDER_TYPE = "order_placed"
ANY_INTERACTION = "interaction"  # every interaction type
CUSTOM_TRAIT_KINDS = (TraitKind.STRING, TraitKind.NUMBER, TraitKind.BOOLEAN, TraitKind.STRINGS)
_KINDS = tuple(kind.value for kind in MetricKind)
_METRIC_KEYS = frozenset({*_KINDS, "of", "where", "within", "description"})
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([dh])\Z")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ORDER_SCOPE = conditions.property_scope(
    "orders", {name: MetricType.STRING for name in ORDER_PROPERTIES | ITEM_PROPERTIES}, False
)
_INTERACTION_SCOPE = conditions.property_scope("interactions", {"type": MetricType.STRING}, True)


def _problem(problems: list[Problem], message: str) -> None:
    problems.append(Problem(None, None, message))


def _valid_name(name: object, kind: str, problems: list[Problem]) -> bool:
    if isinstance(name, str) and _IDENTIFIER.match(name) and name not in parser.KEYWORDS:
        return True
    _problem(
        problems,
        f"{kind} name {name!r} must be an identifier (letters, digits, _) and not a keyword",
    )
    return False


def read_traits(raw: Mapping[str, Any], problems: list[Problem]) -> dict[str, TraitKind]:
    """Custom traits: name -> string | number | boolean | strings."""
    kinds = {kind.value: kind for kind in CUSTOM_TRAIT_KINDS}
    traits: dict[str, TraitKind] = {}
    for name, kind in raw.items():
        if not _valid_name(name, "trait", problems):
            continue
        if name in BUILT_IN_TRAITS:
            _problem(problems, f"trait {name!r} is a built-in trait; declare only custom ones")
        elif kind not in kinds:
            _problem(
                problems, f"trait {name!r}: type must be one of {', '.join(kinds)}, got {kind!r}"
            )
        else:
            traits[name] = kinds[kind]
    return traits


def read_metrics(
    raw: Mapping[str, Any], retention: Retention | None, problems: list[Problem]
) -> dict[str, EventMetric]:
    """Declared event metrics, by name. `retention`: how long ingest keeps each source's
    rows; a window longer than that is refused, naming the setting."""
    metrics: dict[str, EventMetric] = {}
    for name, spec in raw.items():
        if not _valid_name(name, "metric", problems):
            continue
        found: list[Problem] = []
        metric = _MetricReader(name, found).read(spec, retention)
        problems.extend(found)
        if metric is not None and not found:
            metrics[name] = metric
    return metrics


class _MetricReader:
    def __init__(self, name: str, problems: list[Problem]) -> None:
        self.name = name
        self.problems = problems

    def problem(self, message: str) -> None:
        _problem(self.problems, f"metric {self.name!r}: {message}")

    def read(self, spec: Any, retention: Retention | None) -> EventMetric | None:
        example = "e.g. {count: email_click, within: 14d}"
        if not isinstance(spec, dict):
            self.problem(f"must be a mapping, {example}")
            return None
        for key in spec:
            if key not in _METRIC_KEYS:
                self.problem(f"unknown key {key!r}; expected: {', '.join(sorted(_METRIC_KEYS))}")
        kinds = [kind for kind in _KINDS if kind in spec]
        if len(kinds) != 1:
            self.problem(f"give exactly one of {', '.join(_KINDS)}, {example}")
            return None
        kind = MetricKind(kinds[0])
        field, types = self._kind(kind, spec)
        window = self._window(spec.get("within"), kind)
        if types is None:
            return None
        source = EventSource.ORDERS if ORDER_TYPE in types else EventSource.INTERACTIONS
        if field is not None and kind is MetricKind.DISTINCT:
            self._distinct_field(field, source)
        where = self._where(spec.get("where"), source)
        self._retention(window, source, retention, spec.get("within"))
        if self.problems:
            return None
        where_condition, where_source = where if where is not None else (None, "")
        uses_items = where_condition is not None and any(
            name.startswith("item.") for name in conditions.names(where_condition)
        )
        event_filter = EventFilter(
            source,
            types - {ANY_INTERACTION},
            where=where_condition,
            where_source=where_source,
            uses_items=uses_items,
        )
        description = str(spec.get("description", ""))
        return EventMetric(self.name, kind, event_filter, field, window, description)

    def _kind(
        self, kind: MetricKind, spec: Mapping[str, Any]
    ) -> tuple[str | None, frozenset[str] | None]:
        """The field summed or counted distinct, and the event types read."""
        value = spec[kind.value]
        if kind is MetricKind.SUM:
            if value not in SUM_FIELDS:
                self.problem(f"sum: must be amount or quantity, got {value!r}")
            of = spec.get("of", ORDER_TYPE)
            if of != ORDER_TYPE:
                self.problem(f"sums are of orders only: of must be {ORDER_TYPE}, got {of!r}")
                return None, None
            return str(value), frozenset({ORDER_TYPE})
        if kind is MetricKind.DISTINCT:
            if "of" not in spec:
                self.problem(
                    "distinct: needs of: <event type>, e.g. {distinct: item.sku, of: order_placed}"
                )
                return None, None
            if not isinstance(value, str) or not parser.NAME.match(value):
                self.problem(f"distinct: must be a property name, got {value!r}")
                return None, None
            return value, self._types(spec["of"], "of")
        if "of" in spec:
            self.problem(f"of applies to sum and distinct; give the event type as {kind}: <type>")
        return None, self._types(value, kind.value)

    def _types(self, value: Any, key: str) -> frozenset[str] | None:
        listed = value if isinstance(value, list) else [value]
        known = sorted(INTERACTION_EVENT_TYPES)
        if not listed or not all(isinstance(item, str) for item in listed):
            self.problem(f"{key}: must be an event type or a list of interaction types")
            return None
        types = frozenset(listed)
        if ORDER_TYPE in types and len(types) > 1:
            self.problem(f"{key}: {ORDER_TYPE} cannot be mixed with interaction types")
            return None
        unknown = sorted(types - INTERACTION_EVENT_TYPES - {ORDER_TYPE, ANY_INTERACTION})
        if unknown:
            self.problem(
                f"{key}: unknown event type {unknown[0]!r}; expected {ORDER_TYPE}, "
                f"{ANY_INTERACTION} (any interaction) or one of {', '.join(known)}"
            )
            return None
        if ANY_INTERACTION in types:
            return frozenset({ANY_INTERACTION})
        return types

    def _window(self, within: Any, kind: MetricKind) -> timedelta | None:
        if within is None:
            return None
        if kind is MetricKind.FIRST:
            self.problem(
                "first with within is not supported (the first event in a window is not kept); "
                "use last, or first over the lifetime"
            )
            return None
        match = _WINDOW.match(str(within)) if isinstance(within, str) else None
        if match is None:
            self.problem(
                "within: must be a positive whole number of days or hours (14d, 36h), "
                f"got {within!r}"
            )
            return None
        count = int(match.group(1))
        return timedelta(days=count) if match.group(2) == "d" else timedelta(hours=count)

    def _distinct_field(self, field: str, source: EventSource) -> None:
        allowed = ORDER_PROPERTIES | ITEM_PROPERTIES
        if source is EventSource.ORDERS and field not in allowed:
            self.problem(f"distinct: an order has {', '.join(sorted(allowed))}, got {field!r}")

    def _where(self, text: Any, source: EventSource) -> tuple[conditions.Condition, str] | None:
        if text is None:
            return None
        if not isinstance(text, str):
            self.problem(f"where: must be a condition string, got {text!r}")
            return None
        normalised = " ".join(text.split())
        try:
            syntax = parser.parse(normalised)
        except parser.ConditionSyntaxError as error:
            self.problem(
                f"where: syntax error at column {error.column} of {normalised!r}: {error.message}"
            )
            return None
        scope = _ORDER_SCOPE if source is EventSource.ORDERS else _INTERACTION_SCOPE
        condition, problems = conditions.bind(syntax, scope)
        for problem in problems:
            self.problem(f"where: column {problem.column} of {normalised!r}: {problem.message}")
        if condition is None:
            return None
        return condition, normalised

    def _retention(
        self,
        window: timedelta | None,
        source: EventSource,
        retention: Retention | None,
        within: Any,
    ) -> None:
        kept = None if retention is None else retention.get(source.value)
        if window is None or kept is None:
            return
        period, setting = kept
        if window > period:
            rows = source.value.removesuffix("s")
            self.problem(
                f"within {within} is longer than the {_span(period)} {rows} rows are kept "
                f"({setting}); shorten the window or raise the setting"
            )


def _span(period: timedelta) -> str:
    if period % timedelta(days=1) == timedelta(0):
        days = period // timedelta(days=1)
        return f"{days} day" + ("s" if days != 1 else "")
    return str(period)
