"""Which definitions the segmenter evaluates under: seeded once, then followed.

The file named by the environment (or the shipped defaults) seeds version 1 on an empty
database only; after that the version in force is what the API activated, and a file that
differs from it is reported at start and ignored. Every process polls the version in force
and switches within `definitions_poll_seconds`; an evaluation that meets a newer version at
its commit (the FOR SHARE read in repository.save_state) rolls back and switches at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import repository as repo
from services.segmenter.ruleset import Ruleset
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.definitions.activation import parse_stored
from shared.retry import Backoff, Retry, repeat_until_stopped
from shared.segmentation import DefinitionError, Definitions, PopulationStats, load_definitions

log = structlog.get_logger("segmenter.definitions")

SEEDER = "segmenter"


# Stored contents never change: parsed once per process, in the cache the API shares.
parse = parse_stored


@dataclass(frozen=True, slots=True)
class StartReport:
    """What start-up found: the version in force, and how the file compared with it."""

    version: int
    seeded: bool
    file_ignored: str | None  # why the file given is not what is in force, if it is not


async def start_ruleset(
    engine: AsyncEngine, text: str, *, file_named: bool
) -> tuple[Ruleset, StartReport]:
    """Seed version 1 from `text` on an empty database, else load the version in force.

    Raises DefinitionError if `text` is invalid and nothing is in force yet; an invalid file
    beside a version in force is reported and ignored like any other that differs."""
    try:
        candidate: Definitions | None = load_definitions(text)
        problem: DefinitionError | None = None
    except DefinitionError as exc:
        candidate, problem = None, exc
    async with pg_connection(engine) as conn, conn.transaction():
        current = await store.in_force(conn)
        if current is None:
            if candidate is None:
                assert problem is not None
                raise problem
            current, seeded = await store.seed(conn, text, candidate.content_hash, SEEDER)
        else:
            seeded = False
    ignored = None
    if not seeded and file_named:
        if problem is not None:
            ignored = f"the definitions file is invalid ({len(problem.problems)} problems)"
        elif candidate is not None and candidate.content_hash != current.content_hash:
            ignored = (
                f"the definitions file differs from version {current.version}, which is in"
                " force; activate it through the API (`python -m services.cli definitions"
                " activate`) to change the definitions"
            )
        if ignored is not None:
            log.warning("definitions_file_ignored", version=current.version, reason=ignored)
    definitions = candidate if seeded and candidate is not None else parse(current.content)
    ruleset = Ruleset(definitions, current.version, PopulationStats(), None, current.publish)
    return ruleset, StartReport(current.version, seeded, ignored)


async def sync(conn: Any, ruleset: Ruleset) -> bool:
    """Switch `ruleset` to the version in force if it is another; True when it switched.

    The population stats are those stored for the new version, if any (an activation copies
    them when their inputs did not change)."""
    current = await store.in_force(conn)
    if current is None or current.version == ruleset.version:
        return False
    previous = ruleset.version
    ruleset.switch(parse(current.content), current.version, current.publish)
    ruleset.adopt_population(await repo.latest_population_stats(conn, current.version))
    log.info(
        "definitions_switched",
        version=current.version,
        replaced=previous,
        changed_dimensions=list(current.changed_dimensions),
        population_id=ruleset.population_id,
    )
    return True


async def follow_loop(
    engine: AsyncEngine, ruleset: Ruleset, poll_seconds: float, stopping: asyncio.Event
) -> None:
    """Poll the version in force (one cheap read) and switch when it moves."""

    async def step() -> None:
        async with pg_connection(engine) as conn:
            version = await store.version_in_force(conn)
            if version is not None and version != ruleset.version:
                await sync(conn, ruleset)

    await repeat_until_stopped(
        step, poll_seconds, stopping, Retry(Backoff(0.2, 5.0), "definitions", stopping)
    )
