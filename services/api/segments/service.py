"""The definitions in force, parsed once per version, and the segments' members."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from services.api.database import Database
from services.api.errors import ApiError, not_found
from services.api.segments import repository
from services.api.segments.schemas import (
    AudienceView,
    CutoffView,
    DefinitionsView,
    DimensionView,
    ScoreView,
    SegmentView,
)
from shared.definitions import repository as store
from shared.segmentation import Definitions, PopulationStats, load_definitions
from shared.segmentation.audiences import MEMBER
from shared.segmentation.metrics import Number
from shared.segmentation.resolution import (
    cutoff_values,
    describe_cutoff,
    exact,
    resolve_condition,
)

# How stale the customer reads' idea of the version in force may be: one indexed single-row
# read per process per interval, and a removed dimension stays visible at most this long.
REFRESH_SECONDS = 1.0
# Reads that have an older answer go on with it for this long while the refresh is under
# way, and then wait for it at most this long: under steady traffic no read waits, and a slow
# PostgreSQL does not slow down answers from the cache.
REFRESH_WAIT_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class DefinitionsInForce:
    version: int
    content_hash: str
    loaded_at: datetime
    definitions: Definitions


@dataclass(frozen=True, slots=True)
class VersionInForce:
    """What the customer reads need to know of the version in force."""

    version: int
    dimensions: frozenset[str]
    scores: frozenset[str]
    definitions: Definitions | None = None  # for reading facts: its event metrics
    audiences: frozenset[str] = frozenset()


class DefinitionsCache:
    """Parsing is costly and a stored version never changes, so each is parsed once.

    It also holds the version in force for the customer reads, read again at most every
    `refresh_seconds` and only when a read asks: nothing runs in the background."""

    def __init__(
        self,
        refresh_seconds: float = REFRESH_SECONDS,
        wait_seconds: float = REFRESH_WAIT_SECONDS,
    ) -> None:
        self._parsed: dict[int, Definitions] = {}
        self._refresh_seconds = refresh_seconds
        self._wait_seconds = wait_seconds
        self._in_force: VersionInForce | None = None
        self._is_known = False
        self._due = 0.0
        self._refreshing: asyncio.Task[VersionInForce | None] | None = None

    def parse(self, version: int, content: str) -> Definitions:
        parsed = self._parsed.get(version)
        if parsed is None:
            parsed = self._parsed[version] = load_definitions(content)
        return parsed

    async def version_in_force(self, db: Database) -> VersionInForce | None:
        """The version in force as of at most `refresh_seconds` ago (plus `wait_seconds`, and
        more while PostgreSQL is slow or away); None while none is stored or none could be
        read yet."""
        now = time.monotonic()
        if now < self._due:
            return self._in_force
        task = self._refreshing
        if task is None:
            # One read at a time, in a task of its own: a caller that goes away (or stops
            # waiting) does not cancel it for the others.
            task = self._refreshing = asyncio.create_task(self._read(db))
            task.add_done_callback(self._settle)
        if self._is_known and now < self._due + self._wait_seconds:
            return self._in_force
        await asyncio.wait({task}, timeout=self._wait_seconds if self._is_known else None)
        if task.done() and not task.cancelled():
            error = task.exception()
            # PostgreSQL unavailable (logged by Database): go on with what is known.
            if error is not None and not isinstance(error, ApiError):
                raise error
        return self._in_force

    def _settle(self, task: asyncio.Task[VersionInForce | None]) -> None:
        self._refreshing = None
        # Also after a failure: a PostgreSQL that is away is asked once per interval.
        self._due = time.monotonic() + self._refresh_seconds
        if task.cancelled() or task.exception() is not None:
            return
        self._in_force, self._is_known = task.result(), True

    async def _read(self, db: Database) -> VersionInForce | None:
        known = self._in_force
        async with db.read() as conn:
            version = await store.version_in_force(conn)
            if version is None:
                return None
            if known is not None and known.version == version:
                return known
            stored = None if version in self._parsed else await store.get_version(conn, version)
        if stored is not None:
            # Off the event loop: a parse takes tens of milliseconds, which the reads that
            # arrive meanwhile would otherwise wait for.
            parsed = await asyncio.to_thread(load_definitions, stored.content)
            self._parsed.setdefault(version, parsed)
        definitions = self._parsed[version]
        return VersionInForce(
            version,
            frozenset(dimension.name for dimension in definitions.dimensions),
            frozenset(definitions.scores),
            definitions,
            audiences=frozenset(audience.name for audience in definitions.audiences),
        )


async def definitions_in_force(db: Database, cache: DefinitionsCache) -> DefinitionsInForce:
    async with db.read() as conn:
        row = await store.in_force(conn)
    if row is None:
        raise _no_definitions()
    return DefinitionsInForce(
        row.version, row.content_hash, row.activated_at, cache.parse(row.version, row.content)
    )


def _no_definitions() -> ApiError:
    return not_found("no_definitions", "no segment definitions have been stored yet")


async def definitions_view(db: Database, cache: DefinitionsCache) -> DefinitionsView:
    """The version in force with its cut-offs and score edges resolved by the newest
    population stats of that version, and each segment's size."""
    async with db.read() as conn:
        stored = await store.in_force(conn)
        if stored is None:
            raise _no_definitions()
        population = await repository.newest_population(conn, stored.version)
        sizes = await repository.segment_sizes(conn)
    defs = cache.parse(stored.version, stored.content)
    stats = None if population is None else PopulationStats.from_dict(defs, population.stats)
    values = cutoff_values(defs, stats)
    return DefinitionsView(
        version=stored.version,
        content_hash=stored.content_hash,
        activated_at=stored.activated_at,
        activated_by=stored.activated_by,
        note=stored.note,
        loaded_at=stored.activated_at,
        description=defs.description,
        population_computed_at=None if population is None else population.computed_at,
        population_customers=None if population is None else population.customers,
        cutoffs=[
            CutoffView(
                name=name,
                metric=spec.metric,
                top_percent=spec.top_percent,
                value=_decimal(spec.value),
                resolved_value=_decimal(values[name]),
                resolved=describe_cutoff(spec, values[name]),
            )
            for name, spec in defs.cutoffs.items()
        ],
        scores=[
            ScoreView(
                name=name,
                metric=spec.metric,
                buckets=spec.buckets,
                better="higher" if spec.higher_is_better else "lower",
                edges=_edges(stats, name),
            )
            for name, spec in defs.scores.items()
        ],
        dimensions=[
            DimensionView(
                name=dim.name,
                description=dim.description,
                segments=[
                    SegmentView(
                        name=rule.name,
                        description=rule.description,
                        condition=rule.source,
                        resolved_condition=resolve_condition(rule.source, rule.condition, values),
                        size=sizes.get((dim.name, rule.name), 0),
                    )
                    for rule in dim.rules
                ],
            )
            for dim in defs.dimensions
        ],
        audiences=[
            AudienceView(
                name=audience.name,
                description=audience.description,
                condition=audience.source,
                resolved_condition=resolve_condition(audience.source, audience.condition, values),
                dimensions=sorted(audience.dimensions),
                audiences=sorted(audience.audiences),
                size=sizes.get((audience.name, MEMBER), 0),
            )
            for audience in defs.audiences
        ],
    )


def _decimal(value: Number | None) -> Decimal | None:
    """Every digit, none trailing, and never an exponent ("1E+3") in the JSON string."""
    return None if value is None else Decimal(exact(value))


def _edges(stats: PopulationStats | None, score: str) -> list[Decimal] | None:
    edges = None if stats is None else stats.edges.get(score)
    return None if edges is None else [Decimal(exact(edge)) for edge in edges]


def check_segment(definitions: Definitions, dimension: str, segment: str) -> None:
    """404 unless the definitions in force have this dimension and segment, or this
    audience and `segment` is `member` (an audience's members are its one segment's)."""
    try:
        segments = definitions.dimension(dimension).segments
    except KeyError:
        try:
            definitions.audience(dimension)
        except KeyError:
            raise not_found(
                "dimension_not_found", f"no dimension or audience {dimension!r}"
            ) from None
        segments = (MEMBER,)
    if segment not in segments:
        raise not_found("segment_not_found", f"dimension {dimension!r} has no segment {segment!r}")
