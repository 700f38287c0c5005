"""What differs between two versions of definitions: which dimensions must be re-evaluated,
whether population stats computed for one hold for the other, and the structural diff that
the API shows between two versions.

Audiences count as dimensions here: an audience is re-evaluated when its condition, the
cut-offs and scores it reads, or a dimension or audience it references changed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from shared.segmentation.audiences import Audience
from shared.segmentation.conditions import render
from shared.segmentation.model import CutoffSpec, Definitions, Dimension, ScoreSpec


def declared_inputs(definitions: Definitions, names: frozenset[str]) -> tuple[Any, ...]:
    """What the declared metrics and custom traits among `names` (and the inputs of the
    scores and cut-offs among them) stand for: a metric by its spec's key (kind, filter,
    field, window; not its description), a trait by its type."""
    wanted = set(names)
    wanted.update(spec.metric for name, spec in definitions.scores.items() if name in names)
    wanted.update(
        spec.metric for name, spec in definitions.cutoffs.items() if name in names and spec.metric
    )
    return tuple(
        sorted(
            (name, _declared_key(definitions, name))
            for name in wanted
            if name in definitions.event_metrics or name in definitions.custom_traits
        )
    )


def _declared_key(definitions: Definitions, name: str) -> str:
    event = definitions.event_metrics.get(name)
    return event.key if event is not None else f"trait:{definitions.custom_traits[name]}"


def dimension_fingerprint(definitions: Definitions, dimension: Dimension) -> tuple[Any, ...]:
    """Everything that decides a customer's segment in `dimension`: its rules in order
    (order is the tie-break), its lets, the cut-offs and scores it reads, and what the
    declared metrics and traits it reads stand for."""
    return (
        tuple((rule.name, rule.condition) for rule in dimension.rules),
        tuple(sorted((name, condition) for name, condition in dimension.lets.items())),
        tuple(
            sorted(
                (name, spec)
                for name, spec in definitions.cutoffs.items()
                if name in dimension.metrics
            )
        ),
        tuple(
            sorted(
                (name, spec)
                for name, spec in definitions.scores.items()
                if name in dimension.metrics
            )
        ),
        declared_inputs(definitions, dimension.metrics),
    )


def audience_fingerprint(definitions: Definitions, audience: Audience) -> tuple[Any, ...]:
    """What decides membership of `audience` besides the dimensions and audiences it
    references: its condition (which names them) and the cut-offs and scores it reads."""
    return (
        audience.condition,
        tuple(sorted((n, s) for n, s in definitions.cutoffs.items() if n in audience.metrics)),
        tuple(sorted((n, s) for n, s in definitions.scores.items() if n in audience.metrics)),
    )


def _changed_audiences(
    old: Definitions, new: Definitions, dimensions: frozenset[str]
) -> frozenset[str]:
    """The new side's audiences added or whose fingerprint differs, or that read one of
    `dimensions` (those that changed) or an audience that changed. In evaluation order, an
    audience comes after those it reads, so one pass decides; no fingerprint nests
    another's, which would grow exponentially with shared references."""
    before = {a.name: a for a in old.audiences}
    changed: set[str] = set()
    for audience in new.audiences:
        was = before.get(audience.name)
        if (
            was is None
            or audience_fingerprint(old, was) != audience_fingerprint(new, audience)
            or audience.dimensions & dimensions
            or audience.audiences & changed
        ):
            changed.add(audience.name)
    return frozenset(changed)


def changed_dimensions(old: Definitions | None, new: Definitions) -> tuple[str, ...]:
    """Dimensions added, removed, or whose rules (or the cut-offs and scores they read)
    differ, in the new file's order and then the removed ones, and the same of audiences
    after them (also those that read a changed dimension or audience): only their
    customers' segments and memberships can move when `new` replaces `old`."""
    if old is None:
        return (*(d.name for d in new.dimensions), *(a.name for a in new.audiences))
    before = {d.name: dimension_fingerprint(old, d) for d in old.dimensions}
    changed = [
        d.name for d in new.dimensions if before.get(d.name) != dimension_fingerprint(new, d)
    ]
    kept = {d.name for d in new.dimensions}
    changed.extend(d.name for d in old.dimensions if d.name not in kept)
    audiences = _changed_audiences(old, new, frozenset(changed))
    changed.extend(a.name for a in new.audiences if a.name in audiences)
    still = {a.name for a in new.audiences}
    changed.extend(a.name for a in old.audiences if a.name not in still)
    return tuple(changed)


def population_spec(definitions: Definitions) -> tuple[Any, ...]:
    """What population stats are computed from: stats for one version hold for another
    with an equal spec."""
    percentile = {n: s for n, s in definitions.cutoffs.items() if s.is_percentile}
    return (
        tuple(sorted(percentile.items())),
        tuple(sorted(definitions.scores.items())),
        declared_inputs(definitions, frozenset(percentile) | frozenset(definitions.scores)),
    )


# The structural diff: what an analyst reads before activating, or after, between versions.
Status = Literal["added", "removed", "changed", "unchanged"]
Spec = TypeVar("Spec", CutoffSpec, ScoreSpec)


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A segment added, removed, or whose condition or description differs."""

    name: str
    status: Literal["added", "removed", "changed"]
    old_condition: str | None
    new_condition: str | None
    old_description: str | None
    new_description: str | None


@dataclass(frozen=True, slots=True)
class LetChange:
    name: str
    status: Literal["added", "removed", "changed"]
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class SpecChange(Generic[Spec]):
    """A cut-off or score added, removed or defined differently."""

    name: str
    status: Literal["added", "removed", "changed"]
    old: Spec | None
    new: Spec | None


@dataclass(frozen=True, slots=True)
class DimensionDiff:
    """One dimension of either side. `reevaluated` is whether activating the new side
    re-evaluates it (it is in `changed_dimensions`): a description alone changes nothing."""

    name: str
    status: Status
    reevaluated: bool
    old_description: str | None
    new_description: str | None
    segments: tuple[SegmentChange, ...]  # only those that differ: new order, then removed
    lets: tuple[LetChange, ...]
    order_changed: bool  # the segments both sides have are in another order (the tie-break)
    inputs_changed: tuple[str, ...]  # cut-offs, scores, declared metrics, traits: redefined


@dataclass(frozen=True, slots=True)
class AudienceDiff:
    """One audience of either side; `reevaluated` as for a dimension: its condition, or
    an input or reference, differs."""

    name: str
    status: Status
    reevaluated: bool
    old_condition: str | None
    new_condition: str | None
    old_description: str | None
    new_description: str | None


@dataclass(frozen=True, slots=True)
class DefinitionsDiff:
    old_description: str
    new_description: str
    dimensions: tuple[DimensionDiff, ...]  # every dimension: the new order, then removed ones
    cutoffs: tuple[SpecChange[CutoffSpec], ...]
    scores: tuple[SpecChange[ScoreSpec], ...]
    audiences: tuple[AudienceDiff, ...] = ()  # every audience: the new order, then removed

    @property
    def is_empty(self) -> bool:
        return (
            self.old_description == self.new_description
            and not self.cutoffs
            and not self.scores
            and all(d.status == "unchanged" for d in self.dimensions)
            and all(a.status == "unchanged" for a in self.audiences)
        )


def diff_definitions(old: Definitions, new: Definitions) -> DefinitionsDiff:
    """Every difference between `old` and `new`, by dimension, segment, let, cut-off and
    score. Conditions are compared parsed (spacing does not count, a changed let counts in
    every segment that uses it) and shown as written."""
    before = {d.name: d for d in old.dimensions}
    after = {d.name: d for d in new.dimensions}
    dimensions = [_dimension_diff(old, before.get(d.name), new, d) for d in new.dimensions]
    dimensions.extend(
        _dimension_diff(old, d, new, None) for d in old.dimensions if d.name not in after
    )
    return DefinitionsDiff(
        old_description=old.description,
        new_description=new.description,
        dimensions=tuple(dimensions),
        cutoffs=_spec_changes(old.cutoffs, new.cutoffs),
        scores=_spec_changes(old.scores, new.scores),
        audiences=_audience_diffs(old, new),
    )


def _audience_diffs(old: Definitions, new: Definitions) -> tuple[AudienceDiff, ...]:
    before = {a.name: a for a in old.audiences}
    after = {a.name: a for a in new.audiences}
    reevaluated_ones = frozenset(changed_dimensions(old, new))
    diffs = []
    for audience in new.audiences:
        was = before.get(audience.name)
        reevaluated = audience.name in reevaluated_ones
        if was is None:
            status: Status = "added"
        else:
            differs = reevaluated or was.description != audience.description
            status = "changed" if differs else "unchanged"
        diffs.append(
            AudienceDiff(
                name=audience.name,
                status=status,
                reevaluated=reevaluated,
                old_condition=None if was is None else was.source,
                new_condition=audience.source,
                old_description=None if was is None else was.description,
                new_description=audience.description,
            )
        )
    diffs.extend(
        AudienceDiff(a.name, "removed", True, a.source, None, a.description, None)
        for a in old.audiences
        if a.name not in after
    )
    return tuple(diffs)


def _spec_changes(old: Mapping[str, Spec], new: Mapping[str, Spec]) -> tuple[SpecChange[Spec], ...]:
    changes = [
        SpecChange(name, "added" if name not in old else "changed", old.get(name), spec)
        for name, spec in new.items()
        if old.get(name) != spec
    ]
    changes.extend(
        SpecChange(name, "removed", spec, None) for name, spec in old.items() if name not in new
    )
    return tuple(changes)


def _dimension_diff(
    old: Definitions, was: Dimension | None, new: Definitions, now: Dimension | None
) -> DimensionDiff:
    if was is None or now is None:
        only = now if now is not None else was
        assert only is not None
        status: Status = "added" if was is None else "removed"
        return DimensionDiff(
            name=only.name,
            status=status,
            reevaluated=True,
            old_description=None if was is None else was.description,
            new_description=None if now is None else now.description,
            segments=_segment_changes(was, now),
            lets=_let_changes(was, now),
            order_changed=False,
            inputs_changed=(),
        )
    reevaluated = dimension_fingerprint(old, was) != dimension_fingerprint(new, now)
    segments = _segment_changes(was, now)
    kept_new = [name for name in now.segments if name in was.segments]
    kept_old = [name for name in was.segments if name in now.segments]
    inputs = sorted(
        name
        for name in was.metrics | now.metrics
        if old.cutoffs.get(name) != new.cutoffs.get(name)
        or old.scores.get(name) != new.scores.get(name)
        or declared_inputs(old, frozenset({name})) != declared_inputs(new, frozenset({name}))
    )
    differs = reevaluated or segments or was.description != now.description
    return DimensionDiff(
        name=now.name,
        status="changed" if differs else "unchanged",
        reevaluated=reevaluated,
        old_description=was.description,
        new_description=now.description,
        segments=segments,
        lets=_let_changes(was, now),
        order_changed=kept_new != kept_old,
        inputs_changed=tuple(inputs),
    )


def _segment_changes(was: Dimension | None, now: Dimension | None) -> tuple[SegmentChange, ...]:
    before = {} if was is None else {rule.name: rule for rule in was.rules}
    after = {} if now is None else {rule.name: rule for rule in now.rules}
    changes = []
    for name, rule in after.items():
        prior = before.get(name)
        if prior is None:
            changes.append(SegmentChange(name, "added", None, rule.source, None, rule.description))
        elif prior.condition != rule.condition or prior.description != rule.description:
            changes.append(
                SegmentChange(
                    name, "changed", prior.source, rule.source, prior.description, rule.description
                )
            )
    changes.extend(
        SegmentChange(name, "removed", rule.source, None, rule.description, None)
        for name, rule in before.items()
        if name not in after
    )
    return tuple(changes)


def _let_changes(was: Dimension | None, now: Dimension | None) -> tuple[LetChange, ...]:
    before = {} if was is None else dict(was.lets)
    after = {} if now is None else dict(now.lets)
    changes = [
        LetChange(
            name,
            "added" if name not in before else "changed",
            None if name not in before else render(before[name]),
            render(condition),
        )
        for name, condition in after.items()
        if before.get(name) != condition
    ]
    changes.extend(
        LetChange(name, "removed", render(condition), None)
        for name, condition in before.items()
        if name not in after
    )
    return tuple(changes)
