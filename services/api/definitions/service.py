"""Definitions, versions, diffs and previews: read and written in the caller's unit of work
(never committed here), and turned into their views."""

from __future__ import annotations

import contextlib
import difflib
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg

from services.api.definitions import repository
from services.api.definitions.documents import invalid_definitions
from services.api.definitions.parsing import DefinitionsParser
from services.api.definitions.schemas import (
    AudienceDiffView,
    AudienceSummary,
    BackfillView,
    CutoffChangeView,
    CutoffView,
    DefinitionsSummary,
    DiffView,
    DimensionDiffView,
    DimensionSummary,
    LetChangeView,
    PreviewProgress,
    PreviewView,
    ScoreChangeView,
    ScoreView,
    SegmentChangeView,
    TextChange,
    VersionDetail,
    VersionView,
)
from services.api.errors import ApiError, not_found
from shared.definitions import repository as store
from shared.definitions.activation import RetentionRows, activate_content
from shared.definitions.repository import (
    ActivationConflictError,
    Backfill,
    Preview,
    Publish,
    StoredVersion,
)
from shared.segmentation import (
    CutoffSpec,
    DefinitionError,
    Definitions,
    ScoreSpec,
)
from shared.segmentation.changes import changed_dimensions, diff_definitions
from shared.segmentation.metrics import Number


async def summary(
    conn: asyncpg.Connection, parser: DefinitionsParser, definitions: Definitions
) -> DefinitionsSummary:
    current = await store.in_force(conn)
    old = None if current is None else await _stored_definitions(parser, current)
    return DefinitionsSummary(
        content_hash=definitions.content_hash,
        description=definitions.description,
        dimensions=[
            DimensionSummary(
                name=d.name,
                description=d.description,
                segments=list(d.segments),
                metrics=sorted(d.metrics),
            )
            for d in definitions.dimensions
        ],
        audiences=[
            AudienceSummary(
                name=a.name,
                description=a.description,
                condition=a.source,
                dimensions=sorted(a.dimensions),
                audiences=sorted(a.audiences),
                metrics=sorted(a.metrics),
            )
            for a in definitions.audiences
        ],
        cutoffs=[_cutoff(spec) for spec in definitions.cutoffs.values()],
        scores=[_score(spec) for spec in definitions.scores.values()],
        in_force_version=None if current is None else current.version,
        changed_dimensions=list(changed_dimensions(old, definitions)),
    )


def _number(value: Number | Decimal | None) -> float | None:
    return None if value is None else float(value)


def _cutoff(spec: CutoffSpec) -> CutoffView:
    return CutoffView(
        name=spec.name,
        metric=spec.metric,
        top_percent=_number(spec.top_percent),
        value=_number(spec.value),
    )


def _score(spec: ScoreSpec) -> ScoreView:
    return ScoreView(
        name=spec.name,
        metric=spec.metric,
        buckets=spec.buckets,
        better="higher" if spec.higher_is_better else "lower",
    )


async def _stored_definitions(parser: DefinitionsParser, stored: StoredVersion) -> Definitions:
    try:
        return await parser.parse(stored.content)
    except DefinitionError as exc:
        # Valid when stored; only a stricter loader since can make it fail.
        failure = invalid_definitions(exc)
        raise ApiError(
            409,
            "stored_definitions_invalid",
            f"version {stored.version} no longer loads ({failure.detail})",
            problems=failure.problems,
        ) from None


# Versions ---------------------------------------------------------------------------------
def _backfill(backfill: Backfill | None) -> BackfillView | None:
    if backfill is None:
        return None
    return BackfillView(
        total=backfill.total,
        queued=backfill.queued,
        started_at=backfill.started_at,
        fed_at=backfill.fed_at,
        completed_at=backfill.completed_at,
        superseded_by=backfill.superseded_by,
    )


def version_view(
    stored: StoredVersion, in_force: int | None, backfill: Backfill | None
) -> VersionView:
    return VersionView(
        version=stored.version,
        content_hash=stored.content_hash,
        activated_at=stored.activated_at,
        activated_by=stored.activated_by,
        note=stored.note,
        replaces=stored.replaces,
        publish=stored.publish,
        changed_dimensions=list(stored.changed_dimensions),
        in_force=stored.version == in_force,
        backfill=_backfill(backfill),
    )


async def versions_page(
    conn: asyncpg.Connection, before: int | None, limit: int
) -> tuple[int | None, list[VersionView], bool]:
    """(version in force, views newest first, whether there are more)."""
    in_force = await store.version_in_force(conn)
    rows = await store.list_versions(conn, before, limit + 1)
    backfills = await repository.backfills_of(conn, [r.version for r in rows[:limit]])
    views = [version_view(r, in_force, backfills.get(r.version)) for r in rows[:limit]]
    return in_force, views, len(rows) > limit


async def stored_version(conn: asyncpg.Connection, version: int) -> StoredVersion:
    stored = await store.get_version(conn, version)
    if stored is None:
        raise not_found("version_not_found", f"no definitions version {version}")
    return stored


async def version_detail(conn: asyncpg.Connection, version: int) -> VersionDetail:
    stored = await stored_version(conn, version)
    in_force = await store.version_in_force(conn)
    view = version_view(stored, in_force, await store.get_backfill(conn, version))
    return VersionDetail(**view.model_dump(), content=stored.content)


async def activate(
    conn: asyncpg.Connection,
    parser: DefinitionsParser,
    content: str,
    *,
    replaces: int | None,
    actor: str,
    note: str,
    publish: Publish,
    retention: RetentionRows = (),
) -> VersionView:
    """Put `content` in force; 422 if invalid, 409 if `replaces` is no longer in force.

    The caller has parsed `content` already (before its unit of work began); the version in
    force is parsed here too, so that the activation's own parses are lookups."""
    current = await store.in_force(conn)
    if current is not None:
        # Only a warm-up: if it no longer loads, activate_content says so below.
        with contextlib.suppress(DefinitionError):
            await parser.parse(current.content)
    try:
        stored = await activate_content(
            conn,
            content,
            replaces=replaces,
            actor=actor,
            note=note,
            publish=publish,
            retention=retention,
        )
    except DefinitionError as exc:
        raise invalid_definitions(exc) from None
    except ActivationConflictError as exc:
        raise ApiError(409, "definitions_conflict", str(exc)) from None
    return version_view(stored, stored.version, await store.get_backfill(conn, stored.version))


# Diffs ------------------------------------------------------------------------------------
async def diff_view(parser: DefinitionsParser, old: StoredVersion, new: StoredVersion) -> DiffView:
    result = diff_definitions(
        await _stored_definitions(parser, old), await _stored_definitions(parser, new)
    )
    text = "".join(
        difflib.unified_diff(
            old.content.splitlines(keepends=True),
            new.content.splitlines(keepends=True),
            fromfile=f"version {old.version}",
            tofile=f"version {new.version}",
        )
    )
    return DiffView(
        from_version=old.version,
        to_version=new.version,
        identical=result.is_empty,
        description=TextChange(old=result.old_description, new=result.new_description),
        dimensions=[
            DimensionDiffView(
                name=d.name,
                status=d.status,
                reevaluated=d.reevaluated,
                old_description=d.old_description,
                new_description=d.new_description,
                segments=[
                    SegmentChangeView(
                        name=s.name,
                        status=s.status,
                        old_condition=s.old_condition,
                        new_condition=s.new_condition,
                        old_description=s.old_description,
                        new_description=s.new_description,
                    )
                    for s in d.segments
                ],
                lets=[
                    LetChangeView(name=c.name, status=c.status, old=c.old, new=c.new)
                    for c in d.lets
                ],
                order_changed=d.order_changed,
                inputs_changed=list(d.inputs_changed),
            )
            for d in result.dimensions
        ],
        audiences=[
            AudienceDiffView(
                name=a.name,
                status=a.status,
                reevaluated=a.reevaluated,
                old_condition=a.old_condition,
                new_condition=a.new_condition,
                old_description=a.old_description,
                new_description=a.new_description,
            )
            for a in result.audiences
        ],
        cutoffs=[
            CutoffChangeView(
                name=c.name,
                status=c.status,
                old=None if c.old is None else _cutoff(c.old),
                new=None if c.new is None else _cutoff(c.new),
            )
            for c in result.cutoffs
        ],
        scores=[
            ScoreChangeView(
                name=c.name,
                status=c.status,
                old=None if c.old is None else _score(c.old),
                new=None if c.new is None else _score(c.new),
            )
            for c in result.scores
        ],
        text=text,
    )


# Previews ---------------------------------------------------------------------------------
def preview_view(preview: Preview) -> PreviewView:
    return PreviewView(
        id=preview.id,
        status=preview.status,
        created_at=preview.created_at,
        created_by=preview.created_by,
        expires_at=preview.expires_at,
        base_version=preview.base_version,
        content_hash=preview.content_hash,
        samples=preview.samples,
        progress=PreviewProgress(done=preview.done, total=preview.total),
        as_of=preview.as_of,
        finished_at=preview.finished_at,
        result=preview.result,
        error=preview.error,
    )


async def create_preview(
    conn: asyncpg.Connection,
    definitions: Definitions,
    *,
    actor: str,
    samples: int,
    keep_seconds: float,
) -> Preview:
    base = await store.version_in_force(conn)
    if base is None:
        raise ApiError(
            409, "no_definitions", "no version is in force yet: there is nothing to compare with"
        )
    return await store.create_preview(
        conn,
        str(uuid.uuid4()),
        actor=actor,
        content=definitions.source,
        content_hash=definitions.content_hash,
        base_version=base,
        samples=samples,
        keep_seconds=keep_seconds,
    )


async def cancel_preview(conn: asyncpg.Connection, preview_id: str) -> Preview:
    """Cancel a pending or running preview; 404 unknown or expired, 409 already finished."""
    found = await store.get_preview(conn, preview_id)
    if found is None:
        raise preview_not_found(preview_id)
    cancelled = await store.cancel_preview(conn, preview_id)
    if cancelled is None:
        # Finished between the two statements, or before: either way there is nothing to stop.
        now = await store.get_preview(conn, preview_id)
        status = found.status if now is None else now.status
        raise ApiError(409, "preview_finished", f"preview {preview_id} is already {status}")
    return cancelled


def preview_not_found(preview_id: str) -> ApiError:
    return not_found("preview_not_found", f"no preview {preview_id} (unknown, or expired)")


def sampled_customers(result: Mapping[str, Any] | None) -> int:
    """How many distinct customers a result names, for the audit log."""
    if not result:
        return 0
    ids = {
        sample.get("customer_id")
        for dimension in result.get("dimensions") or ()
        if isinstance(dimension, dict)
        for move in dimension.get("transitions") or ()
        if isinstance(move, dict)
        for sample in move.get("samples") or ()
        if isinstance(sample, dict)
    }
    ids.discard(None)
    return len(ids)
