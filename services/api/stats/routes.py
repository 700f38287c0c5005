"""/v1/stats: counts of segment transitions over a period."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from services.api.deps import Reader, ResourcesDep
from services.api.errors import ApiError, error_responses
from services.api.stats import repository
from services.api.stats.schemas import Transition, TransitionsView

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
