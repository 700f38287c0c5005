"""The definitions in force, parsed once per version, and the segments' members."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.api.database import Database
from services.api.errors import not_found
from shared.definitions import repository as store
from shared.segmentation import Definitions, load_definitions


@dataclass(frozen=True, slots=True)
class DefinitionsInForce:
    version: int
    content_hash: str
    loaded_at: datetime
    definitions: Definitions


class DefinitionsCache:
    """Parsing is costly and a stored version never changes, so each is parsed once."""

    def __init__(self) -> None:
        self._parsed: dict[int, Definitions] = {}

    def parse(self, version: int, content: str) -> Definitions:
        parsed = self._parsed.get(version)
        if parsed is None:
            parsed = self._parsed[version] = load_definitions(content)
        return parsed


async def definitions_in_force(db: Database, cache: DefinitionsCache) -> DefinitionsInForce:
    async with db.read() as conn:
        row = await store.in_force(conn)
    if row is None:
        raise not_found("no_definitions", "no segment definitions have been stored yet")
    return DefinitionsInForce(
        row.version, row.content_hash, row.activated_at, cache.parse(row.version, row.content)
    )


def check_segment(definitions: Definitions, dimension: str, segment: str) -> None:
    """404 unless the definitions in force have this dimension and segment."""
    try:
        segments = definitions.dimension(dimension).segments
    except KeyError:
        raise not_found("dimension_not_found", f"no dimension {dimension!r}") from None
    if segment not in segments:
        raise not_found("segment_not_found", f"dimension {dimension!r} has no segment {segment!r}")
