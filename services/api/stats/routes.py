"""/v1/stats: counts of segment transitions over a period, and sizes over time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from services.api.deps import Reader, ResourcesDep
from services.api.errors import ApiError, error_responses
from services.api.stats import repository, service
from services.api.stats.schemas import SizeSeries, SizesView, Transition, TransitionsView

router = APIRouter(prefix="/v1/stats", tags=["stats"])

# PostgreSQL and Python disagree on far-off dates; no change is that old or that new.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(3000, 1, 1, tzinfo=UTC)


@router.get(
    "/transitions",
    response_model=TransitionsView,
    responses=error_responses(401, 403, 422, 503),
)
async def transitions(
    resources: ResourcesDep,
    who: Reader,
    since: Annotated[
        AwareDatetime,
        Query(description="Start, inclusive; RFC 3339 with an offset (`Z` or `%2B01:00`)"),
    ],
    until: Annotated[
        AwareDatetime | None, Query(description="End, exclusive; default: now")
    ] = None,
    dimension: Annotated[
        str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    ] = None,
) -> TransitionsView:
    """How many customers moved from each segment to each other one, per dimension (and
    audience) in force."""
    end = until if until is not None else datetime.now(UTC)
    if not (_EARLIEST <= since <= _LATEST and _EARLIEST <= end <= _LATEST):
        raise ApiError(422, "invalid_period", "`since` and `until` must be within 1970..3000")
    if end <= since:
        raise ApiError(422, "invalid_period", "`until` must be later than `since`")
    # A removed dimension's moves, its exits among them, are history, not what is in force.
    in_force = await resources.definitions.version_in_force(resources.db)
    dimensions = None if in_force is None else sorted(in_force.dimensions | in_force.audiences)
    async with resources.db.read() as conn:
        rows = await repository.transition_counts(conn, since, end, dimension, dimensions)
    items = [Transition(**dict(r)) for r in rows]
    return TransitionsView(
        since=since, until=end, total=sum(t.count for t in items), transitions=items
    )


@router.get("/sizes", response_model=SizesView, responses=error_responses(401, 403, 422, 503))
async def sizes(
    resources: ResourcesDep,
    who: Reader,
    since: Annotated[
        AwareDatetime | None, Query(description="Start, inclusive; default: a day before `until`")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="End, exclusive; default: now")
    ] = None,
    dimension: Annotated[
        str | None, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    ] = None,
    step: Annotated[
        str | None,
        Query(
            max_length=12,
            description="Between points: `300`, `5m`, `1h`, `1d`, a multiple of a stored step; "
            "default: the finest that gives at most 500 points",
        ),
    ] = None,
) -> SizesView:
    """Each segment's and audience's size over time, from the snapshots the segmenter keeps
    (5-minute, hourly and daily by default)."""
    end = until if until is not None else datetime.now(UTC)
    start = since if since is not None else end - timedelta(days=1)
    if not (_EARLIEST <= start <= _LATEST and _EARLIEST <= end <= _LATEST):
        raise ApiError(422, "invalid_period", "`since` and `until` must be within 1970..3000")
    if end <= start:
        raise ApiError(422, "invalid_period", "`until` must be later than `since`")
    try:
        requested = None if step is None else service.parse_step(step)
        async with resources.db.read() as conn:
            chosen = service.choose_series(await repository.size_steps(conn), start, end, requested)
            rows = (
                []
                if chosen is None
                else await repository.size_points(conn, *chosen, start, end, dimension)
            )
    except service.StepError as exc:
        raise ApiError(422, "invalid_step", str(exc)) from exc
    at, series = service.columns(rows)
    return SizesView(
        since=start,
        until=end,
        step_seconds=None if chosen is None else chosen[1],
        source_step_seconds=None if chosen is None else chosen[0],
        at=at,
        series=[SizeSeries(**s) for s in series],
    )
