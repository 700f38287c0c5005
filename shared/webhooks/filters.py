"""Which segment changes a subscription receives.

Each list narrows: an empty list accepts anything. `dimensions` and `audiences` both name
what changed (a change's `dimension` is the dimension or the audience, and names are unique
across the two), so together they accept a change in any of the names listed in either.
`segments` accepts a change whose `from_segment` or `to_segment` is listed (an audience's
segment is `member`); `causes` one whose cause is listed. The kinds combine with AND.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Filters:
    dimensions: frozenset[str] = frozenset()
    audiences: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    causes: frozenset[str] = frozenset()

    def accepts(
        self, dimension: str, from_segment: str | None, to_segment: str | None, cause: str
    ) -> bool:
        """Whether a change with these fields passes every filter."""
        names = self.dimensions | self.audiences
        if names and dimension not in names:
            return False
        if self.segments and from_segment not in self.segments and to_segment not in self.segments:
            return False
        return not self.causes or cause in self.causes
