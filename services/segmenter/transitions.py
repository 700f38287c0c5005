"""What a preview reports per dimension: segment sizes now and under the candidate, the
moves from one to the other, and sample customers for each move. Pure: it is fed one
customer at a time, in customer-id order, so the first samples taken are the first by id.

A cell's `from` or `to` is None where the customer has no segment: a dimension added (or a
customer never evaluated) has no `from`, a removed one no `to`. Audiences are reported the
same way, apart (`audiences()`): their one segment is `member`, an entry is from None, an
exit to None, and customers outside the audience on both sides are not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from shared.segmentation import Assignment, Definitions, Evaluation
from shared.segmentation.audiences import MEMBER
from shared.segmentation.changes import changed_dimensions

Cell = tuple[str, str | None, str | None]  # dimension, from segment, to segment


def removed_reason(dimension: str, kind: str = "dimension") -> str:
    """The reason given for leaving a dimension (or audience) the candidate does not have.
    Activation's own names the version it becomes, which a preview cannot know."""
    return f"{kind} {dimension!r} is not in the candidate definitions"


class Transitions:
    def __init__(self, base: Definitions, candidate: Definitions, samples: int) -> None:
        self._base = base
        self._candidate = candidate
        self._samples_per_cell = samples
        self._kept = frozenset(d.name for d in candidate.dimensions) | {
            a.name for a in candidate.audiences
        }
        self._audiences = frozenset(a.name for a in (*base.audiences, *candidate.audiences))
        self._now: Counter[tuple[str, str]] = Counter()
        self._cells: Counter[Cell] = Counter()
        self._samples: dict[Cell, list[dict[str, str]]] = {}
        self.customers = 0
        self.uncovered = 0

    def add(
        self, customer_id: str, current: Mapping[str, Assignment], result: Evaluation | None
    ) -> None:
        """One customer: its stored assignments and the candidate's evaluation of it (None:
        some dimension of the candidate has no rule that covers it)."""
        self.customers += 1
        gone = []
        for dimension, assignment in current.items():
            self._now[dimension, assignment.segment] += 1
            if dimension not in self._kept:
                gone.append(dimension)
        if result is None:
            # The evaluator skips such a customer and leaves its segments as they are, so it
            # is counted apart rather than predicted to move anywhere.
            self.uncovered += 1
            return
        for dimension, decision in result.assignments.items():
            prior = current.get(dimension)
            cell: Cell = (dimension, None if prior is None else prior.segment, decision.segment)
            self._cells[cell] += 1
            if cell[1] != cell[2] and self._wants_sample(cell):
                # Rendered only while samples are wanted: rendering costs more than deciding.
                self._samples[cell].append({"customer_id": customer_id, "reason": decision.reason})
        for name, membership in result.audiences.items():
            prior = current.get(name)
            cell = (name, None if prior is None else prior.segment, membership.segment)
            if cell[1] is None and cell[2] is None:
                continue  # outside on both sides
            self._cells[cell] += 1
            if cell[1] != cell[2] and self._wants_sample(cell):
                self._samples[cell].append(
                    {"customer_id": customer_id, "reason": membership.reason}
                )
        for dimension in sorted(gone):
            cell = (dimension, current[dimension].segment, None)
            self._cells[cell] += 1
            if self._wants_sample(cell):
                kind = "audience" if dimension in self._audiences else "dimension"
                self._samples[cell].append(
                    {"customer_id": customer_id, "reason": removed_reason(dimension, kind)}
                )

    def _wants_sample(self, cell: Cell) -> bool:
        taken = self._samples.setdefault(cell, [])
        return len(taken) < self._samples_per_cell

    def dimensions(self) -> list[dict[str, Any]]:
        """Every dimension of the candidate, then those it removes, as the preview's result
        lists them: status, sizes and transitions (unchanged diagonal cells included)."""
        candidate = {d.name: d.segments for d in self._candidate.dimensions}
        base = {d.name: d.segments for d in self._base.dimensions}
        seen = {d for d, _ in self._now} | {d for d, _, _ in self._cells}
        return self._entries(candidate, base, sorted(seen - self._audiences))

    def audiences(self) -> list[dict[str, Any]]:
        """Every audience of the candidate, then those it removes, as `dimensions()` lists
        dimensions: the size of `member` now and under the candidate, entries and exits,
        and the members who stay."""
        candidate = {a.name: (MEMBER,) for a in self._candidate.audiences}
        base = {a.name: (MEMBER,) for a in self._base.audiences}
        return self._entries(candidate, base, [])

    def _entries(
        self,
        candidate: Mapping[str, tuple[str, ...]],
        base: Mapping[str, tuple[str, ...]],
        seen: list[str],
    ) -> list[dict[str, Any]]:
        changed = set(changed_dimensions(self._base, self._candidate))
        out = []
        for name in _ordered(candidate, base, seen):
            if name not in candidate:
                status = "removed"
            elif name not in base:
                status = "added"
            else:
                status = "changed" if name in changed else "unchanged"
            cells = {cell: n for cell, n in self._cells.items() if cell[0] == name}
            stored = sorted({s for d, s in self._now if d == name} | _segments_in(cells))
            segments = _ordered(candidate.get(name, ()), base.get(name, ()), stored)
            under_candidate: Counter[str | None] = Counter()
            for (_, _, to), n in cells.items():
                under_candidate[to] += n
            rank = {segment: i for i, segment in enumerate(segments)}
            out.append(
                {
                    "name": name,
                    "status": status,
                    "segments": [
                        {"name": s, "now": self._now[name, s], "candidate": under_candidate[s]}
                        for s in segments
                    ],
                    "transitions": [
                        {
                            "from": cell[1],
                            "to": cell[2],
                            "customers": cells[cell],
                            "samples": self._samples.get(cell, []),
                        }
                        for cell in sorted(
                            cells, key=lambda c: (_rank(rank, c[1]), _rank(rank, c[2]))
                        )
                    ],
                }
            )
        return out


def _ordered(*groups: Iterable[str]) -> list[str]:
    """The names of all groups, first appearance first."""
    return list(dict.fromkeys(name for group in groups for name in group))


def _segments_in(cells: Mapping[Cell, int]) -> set[str]:
    return {s for _, before, after in cells for s in (before, after) if s is not None}


def _rank(rank: Mapping[str, int], segment: str | None) -> int:
    return -1 if segment is None else rank[segment]
