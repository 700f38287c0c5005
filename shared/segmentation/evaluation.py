"""evaluate(): one decision per dimension with its reason, and when the next change is due.

State machines settle at the evaluation instant: after a dimension changes segment, its
rules are evaluated again with `previous` set to the new segment (days_in_segment=0) until
the segment holds, so the result is stable and the next change is strictly in the future.
Audiences are decided after every dimension has settled (audiences.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from shared.segmentation.audiences import (
    MEMBER,
    AudienceDecision,
    decide_audiences,
    memberships,
)
from shared.segmentation.facts import Assignment, CustomerFacts
from shared.segmentation.metrics import (
    AGE,
    MICROSECONDS_PER_DAY,
    MetricValue,
    crossing_offsets,
    days_between,
)
from shared.segmentation.model import Definitions, Dimension, SegmentRule
from shared.segmentation.population import PopulationStats, cutoff_value, score_of
from shared.segmentation.timeline import Timeline, lateness_exits
from shared.segmentation.traits import birthday_in

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Decision:
    """The segment of one dimension. `since` is kept from the previous assignment when the
    segment is unchanged and is the evaluation time when it changed; `previous` is the
    segment before this evaluation. `values` holds the metric values the matching rule
    was decided on (including `previous`/`days_in_segment` as that rule saw them)."""

    segment: str
    changed: bool
    since: datetime
    previous: str | None
    values: Mapping[str, MetricValue]
    rule: SegmentRule = field(repr=False, compare=False)

    @property
    def reason(self) -> str:
        """The matched condition with the actual values, e.g. `days_since_last_order=95.2 >=
        90 and days_since_last_order=95.2 < 180`. Rendered on demand: most evaluations
        change nothing and never need it, and rendering costs more than deciding."""
        return self.rule.explain(self.values)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Exactly one decision per dimension, one per audience, and the earliest time after
    the evaluation at which some segment or membership changes if no new event arrives
    (None: never, or only after the last instant a datetime can hold)."""

    assignments: dict[str, Decision]
    next_change_at: datetime | None
    # Each score's value at the evaluation (null for a null input), for the customer read.
    scores: Mapping[str, int | None] = field(default_factory=dict)
    audiences: dict[str, AudienceDecision] = field(default_factory=dict)

    @property
    def current(self) -> dict[str, Assignment]:
        """The assignments to pass as `previous` to the next evaluation: every dimension's
        segment, and `MEMBER` for each audience the customer is in."""
        current = {name: Assignment(d.segment, d.since) for name, d in self.assignments.items()}
        for name, audience in self.audiences.items():
            if audience.since is not None:
                current[name] = Assignment(MEMBER, audience.since)
        return current


class UncoveredCustomerError(ValueError):
    """No rule of a dimension matched: validation samples the space, so definitions that
    leave a corner uncovered can slip through. A permanent error for this customer."""

    def __init__(self, dimension: str, customer_id: str, values: Mapping[str, MetricValue]) -> None:
        shown = ", ".join(f"{name}={value!r}" for name, value in sorted(values.items()))
        super().__init__(f"no rule of {dimension} matches customer {customer_id}: {shown}")
        self.dimension = dimension
        self.customer_id = customer_id


def evaluate(
    definitions: Definitions,
    facts: CustomerFacts,
    now: datetime,
    previous: Mapping[str, Assignment],
    population: PopulationStats,
    *,
    find_next_change: bool = True,
    zone: tzinfo = UTC,
) -> Evaluation:
    """Assign every dimension's segment at `now` (tz-aware; never the wall clock).

    `previous` maps dimension -> current assignment, and audience -> `Assignment(MEMBER,
    since)` for a member; missing dimensions, and segments the definitions no longer have,
    count as no previous segment, and a missing audience as not a member. Set
    `find_next_change=False` to skip the next-change search (previews). `zone`: where `age`
    moves, at midnight on the birthday (the services' STREAMSEG_BIRTHDAY_TIME_ZONE)."""
    _require_aware(now)
    timeline = _timeline(definitions, facts, zone)
    env = _environment(definitions, timeline.metrics(now), population)
    decisions = {}
    for dimension in definitions.dimensions:
        prior = previous.get(dimension.name)
        rule, values = _settle(dimension, env, prior, now, facts.customer_id, keep_values=True)
        changed = prior is None or prior.segment != rule.name
        decisions[dimension.name] = Decision(
            segment=rule.name,
            changed=changed,
            since=now if changed or prior is None else prior.since,
            previous=None if prior is None else prior.segment,
            values=values,
            rule=rule,
        )
    audiences = {}
    if definitions.audiences:
        for name, decision in decisions.items():
            env[name] = decision.segment
        audiences = decide_audiences(definitions.audiences, env, previous, now)
    next_change_at = None
    if find_next_change:
        current = {name: Assignment(d.segment, d.since) for name, d in decisions.items()}
        members = {name: audience.member for name, audience in audiences.items()}
        next_change_at = _next_change_at(
            definitions, timeline, now, current, members, population, env
        )
    scores = {name: env[name] for name in definitions.scores}
    return Evaluation(decisions, next_change_at, scores, audiences)  # type: ignore[arg-type]


def matching_segments(
    definitions: Definitions,
    facts: CustomerFacts,
    now: datetime,
    previous: Mapping[str, Assignment],
    population: PopulationStats,
    *,
    zone: tzinfo = UTC,
) -> dict[str, tuple[str, ...]]:
    """Every segment whose rule matches, per dimension, without settling (for previews and
    tests: valid definitions give exactly one per dimension)."""
    _require_aware(now)
    metrics = _timeline(definitions, facts, zone).metrics(now)
    env = _environment(definitions, metrics, population)
    found = {}
    for dimension in definitions.dimensions:
        _set_previous(dimension, env, previous.get(dimension.name), now)
        found[dimension.name] = tuple(rule.name for rule in dimension.matches(env))
    return found


def _timeline(definitions: Definitions, facts: CustomerFacts, zone: tzinfo) -> Timeline:
    return Timeline(
        facts, definitions.event_metrics, zone=zone, custom_traits=definitions.custom_traits
    )


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _environment(
    definitions: Definitions, env: dict[str, MetricValue], population: PopulationStats
) -> dict[str, MetricValue]:
    """The fact metrics completed with scores and cut-offs (in place)."""
    for name, score in definitions.scores.items():
        env[name] = score_of(score, env[score.metric], population.edges.get(name))
    for name, cutoff in definitions.cutoffs.items():
        env[name] = cutoff_value(cutoff, population)
    return env


def _set_previous(
    dimension: Dimension, env: dict[str, MetricValue], prior: Assignment | None, now: datetime
) -> str | None:
    current = prior.segment if prior is not None and prior.segment in dimension.segments else None
    env["previous"] = current
    env["days_in_segment"] = (
        None if prior is None or current is None else days_between(prior.since, now)
    )
    return current


def _settle(
    dimension: Dimension,
    env: dict[str, MetricValue],
    prior: Assignment | None,
    now: datetime,
    customer_id: str,
    keep_values: bool,
) -> tuple[SegmentRule, Mapping[str, MetricValue]]:
    current = _set_previous(dimension, env, prior, now)
    rule = _match(dimension, env, customer_id)
    # The values are kept from where the final segment was entered: "previous=churned and
    # days_since_last_order=2 < 30" says more than the re-check that confirms it.
    values = _values(rule, env) if keep_values else env
    if not dimension.uses_previous:
        return rule, values
    for _ in dimension.rules:
        if rule.name == current:
            break
        current = env["previous"] = rule.name
        env["days_in_segment"] = 0.0
        following = _match(dimension, env, customer_id)
        if following is rule:
            break
        rule = following
        values = _values(rule, env) if keep_values else env
    return rule, values


def _values(rule: SegmentRule, env: Mapping[str, MetricValue]) -> dict[str, MetricValue]:
    return {name: env[name] for name in rule.metrics}


def _match(dimension: Dimension, env: dict[str, MetricValue], customer_id: str) -> SegmentRule:
    rule = dimension.match(env)
    if rule is None:
        used = {name: env[name] for name in dimension.metrics}
        raise UncoveredCustomerError(dimension.name, customer_id, used)
    return rule


def _next_change_at(
    definitions: Definitions,
    timeline: Timeline,
    now: datetime,
    current: Mapping[str, Assignment],
    members: Mapping[str, bool],
    population: PopulationStats,
    env: Mapping[str, MetricValue],
) -> datetime | None:
    """Segments only change where some comparison flips: a days-since metric crossing a
    constant, cut-off or score edge, or an event leaving a rolling window across one. Those
    instants are collected and evaluated in order; the first that changes a segment wins.

    Instants are microsecond offsets from `now`, each with the bitmask of the dimensions
    and audiences whose metrics flip there: only those can change at that instant. There
    are at most two per threshold and days-since metric and one per event leaving a window,
    however far ahead they lie.

    An audience changes only where one of its own metrics flips, or where a dimension or
    audience it reads changes. A dimension's change is itself the answer, so at an instant
    where no dimension changes the audiences are decided with the current segments (all of
    them, in order: one that reads another follows it at the same instant)."""
    moments = _breakpoints(definitions, timeline, now, current, population, env)
    customer_id = timeline.facts.customer_id
    audience_bits = len(definitions.dimensions)
    for offset in sorted(moments):
        mask = moments[offset]
        moment = now + timedelta(microseconds=offset)
        moment_env = _environment(definitions, timeline.metrics(moment), population)
        for index, dimension in enumerate(definitions.dimensions):
            if mask >> index & 1:
                prior = current[dimension.name]
                rule, _ = _settle(dimension, moment_env, prior, moment, customer_id, False)
                if rule.name != prior.segment:
                    return moment
        if mask >> audience_bits:
            for dimension in definitions.dimensions:
                moment_env[dimension.name] = current[dimension.name].segment
            if memberships(definitions.audiences, moment_env) != members:
                return moment
    return None


def _breakpoints(
    definitions: Definitions,
    timeline: Timeline,
    now: datetime,
    current: Mapping[str, Assignment],
    population: PopulationStats,
    env: Mapping[str, MetricValue],
) -> dict[int, int]:
    moments: dict[int, int] = {}
    # An instant a datetime cannot hold (after year 9999) is never reached.
    room = (datetime.max.replace(tzinfo=now.tzinfo) - now) // _MICROSECOND
    for dependence in definitions.time_dependences:
        thresholds: list[Any] = [*dependence.constants]
        thresholds.extend(env[cutoff] for cutoff in dependence.cutoffs)
        for score in dependence.scores:
            thresholds.extend(population.edges.get(score, ()))
        metric = definitions.metric(dependence.metric)
        offsets: Iterable[int]
        if dependence.metric == AGE:
            birth = timeline.facts.traits.get("birth_date")
            age = env[AGE]
            offsets = (
                ()
                if not isinstance(birth, date) or not isinstance(age, int)
                else (_birthdays(birth, age, now, timeline.zone, thresholds, room))
            )
        elif metric.anchor is not None:
            anchor = metric.anchor(timeline.facts)
            offsets = list(_crossings(anchor, now, env[dependence.metric], thresholds, room))
            if metric.event is not None and env[dependence.metric] is not None:
                # A windowed last turns null as its event leaves the window.
                late = lateness_exits(metric.event, anchor, now)
                if late is not None:
                    offsets.append(late)
        else:
            assert metric.leaves_window
            offsets = timeline.window_exits(dependence.metric, now, thresholds)
        for offset in offsets:
            if offset <= room:
                moments[offset] = moments.get(offset, 0) | dependence.dimension_mask
    for index, dimension in enumerate(definitions.dimensions):
        thresholds = [*dimension.thresholds.get("days_in_segment", ())]
        thresholds.extend(env[c] for c in dimension.cutoff_refs.get("days_in_segment", ()))
        if thresholds:
            since = current[dimension.name].since
            for offset in _crossings(since, now, days_between(since, now), thresholds, room):
                moments[offset] = moments.get(offset, 0) | 1 << index
    return moments


def _birthdays(
    birth: date, age: int, now: datetime, zone: tzinfo, thresholds: list[Any], room: int
) -> Iterator[int]:
    """The birthdays at which `age` (whole years, now `age`) reaches a threshold or passes
    it, as offsets from `now`: `age >= t` flips at age ceil(t), `age > t` at floor(t) + 1."""
    for threshold in thresholds:
        if not isinstance(threshold, int | float | Decimal) or not math.isfinite(threshold):
            continue
        for reached in {math.ceil(threshold), math.floor(threshold) + 1}:
            year = birth.year + reached
            if reached <= age or not MINYEAR <= year <= MAXYEAR:
                continue
            ahead = (_day_begins(birthday_in(birth, year), zone) - now) // _MICROSECOND
            if 0 < ahead <= room:
                yield ahead


def _day_begins(day: date, zone: tzinfo) -> datetime:
    """The first instant whose date in `zone` is `day` or later: local midnight, or the
    first instant after it where a clock change skips midnight."""
    guess = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    if _local_date(guess, zone) >= day and _local_date(guess - _MICROSECOND, zone) < day:
        return guess
    # Bisect between two instants a day and a half either side: local offsets are smaller.
    low, high = guess - timedelta(hours=36), guess + timedelta(hours=36)
    while high - low > _MICROSECOND:
        middle = low + (high - low) // 2
        if _local_date(middle, zone) >= day:
            high = middle
        else:
            low = middle
    return high


def _local_date(moment: datetime, zone: tzinfo) -> date:
    return moment.astimezone(zone).date()


def _crossings(
    anchor: datetime | None, now: datetime, value: MetricValue, thresholds: list[Any], room: int
) -> Iterator[int]:
    """When a days-since metric, now at `value`, crosses each threshold still ahead of it,
    up to `room` microseconds from `now`."""
    if anchor is None or value is None:
        return
    assert isinstance(value, float)
    since_anchor = (now - anchor) // _MICROSECOND
    # A day of slack over the room: the exact check below decides, and thresholds past it
    # (1e300 days, say) would overflow the float arithmetic of crossing_offsets.
    reachable = value + room / MICROSECONDS_PER_DAY + 1
    for threshold in thresholds:
        if not value <= threshold < reachable:
            continue  # already crossed, unresolved (infinite) or past year 9999
        for offset in crossing_offsets(threshold):
            ahead = offset - since_anchor
            if 0 < ahead <= room:
                yield ahead
