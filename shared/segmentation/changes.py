"""What differs between two versions of definitions: which dimensions must be re-evaluated,
and whether population stats computed for one hold for the other."""

from __future__ import annotations

from typing import Any

from shared.segmentation.model import Definitions, Dimension


def dimension_fingerprint(definitions: Definitions, dimension: Dimension) -> tuple[Any, ...]:
    """Everything that decides a customer's segment in `dimension`: its rules in order
    (order is the tie-break), its lets, and the cut-offs and scores it reads."""
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
    )


def changed_dimensions(old: Definitions | None, new: Definitions) -> tuple[str, ...]:
    """Dimensions added, removed, or whose rules (or the cut-offs and scores they read)
    differ, in the new file's order and then the removed ones: only their customers'
    segments can move when `new` replaces `old`."""
    if old is None:
        return tuple(d.name for d in new.dimensions)
    before = {d.name: dimension_fingerprint(old, d) for d in old.dimensions}
    changed = [
        d.name for d in new.dimensions if before.get(d.name) != dimension_fingerprint(new, d)
    ]
    kept = {d.name for d in new.dimensions}
    changed.extend(d.name for d in old.dimensions if d.name not in kept)
    return tuple(changed)


def population_spec(definitions: Definitions) -> tuple[Any, ...]:
    """What population stats are computed from: stats for one version hold for another
    with an equal spec."""
    return (
        tuple(sorted((n, s) for n, s in definitions.cutoffs.items() if s.is_percentile)),
        tuple(sorted(definitions.scores.items())),
    )
