"""Activating definitions: validated, compared with the version in force, then stored.

The API's `POST /v1/definitions` and rollback call this in their unit of work; so do tests
and the chaos harness through the API. The caller's transaction commits or rolls back.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from shared.definitions import repository as store
from shared.definitions.repository import Publish, StoredVersion
from shared.segmentation import Definitions, load_definitions
from shared.segmentation.changes import changed_dimensions, population_spec

# What ingest keeps, as the API reads it (ingest_retention): (source, retention, setting).
RetentionRows = tuple[tuple[str, timedelta, str], ...]


def parse_stored(content: str, retention: RetentionRows = ()) -> Definitions:
    """A content that loads once always loads the same: parsed once (an invalid one raises
    DefinitionError every time). The API parses a candidate off its event loop with this
    before it activates it, so the activation's own parse is a lookup.

    `retention`: checked for candidates (a window longer than ingest keeps the rows it
    reads is refused); stored versions in force are parsed without it."""
    return _parse(content, retention)  # one cache key however the caller passes it


@functools.lru_cache(maxsize=32)
def _parse(content: str, retention: RetentionRows) -> Definitions:
    by_source = {source: (period, setting) for source, period, setting in retention}
    return load_definitions(content, retention=by_source or None)


async def activate_content(
    conn: Any,
    content: str,
    *,
    replaces: int | None,
    actor: str,
    note: str = "",
    publish: Publish = "each",
    retention: RetentionRows = (),
) -> StoredVersion:
    """Put `content` in force as a new version replacing `replaces`.

    Raises DefinitionError (every problem) if it is invalid, and ActivationConflictError if
    `replaces` is no longer the version in force. Only the dimensions whose rules changed
    are re-evaluated; when none did (a rollback to equal rules, a new description), no
    backfill runs. Population stats are kept when their inputs did not change."""
    candidate = parse_stored(content, retention)
    current = await store.in_force(conn)
    old = None if current is None else parse_stored(current.content)
    changed = changed_dimensions(old, candidate)
    # The backfill's expected size, for progress: one may start even when nothing changed,
    # to carry on a backfill this activation supersedes.
    customers = await store.customer_count(conn)
    return await store.activate(
        conn,
        content,
        candidate.content_hash,
        replaces=replaces,
        actor=actor,
        note=note,
        publish=publish,
        changed_dimensions=changed,
        customers=customers,
        copy_population=old is not None and population_spec(old) == population_spec(candidate),
    )
