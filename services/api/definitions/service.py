"""Reading a definitions document from a request, and turning definitions, versions, diffs
and previews into their views. Runs in the caller's unit of work; never commits."""

from __future__ import annotations

import difflib
import json
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
import yaml

from services.api.definitions import repository
from services.api.definitions.parsing import DefinitionsParser
from services.api.definitions.schemas import (
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
from shared.definitions.activation import activate_content
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
    Problem,
    ScoreSpec,
)
from shared.segmentation.changes import changed_dimensions, diff_definitions
from shared.segmentation.metrics import Number

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/plain"})
JSON_TYPE = "application/json"


def read_document(content_type: str | None, body: bytes) -> str:
    """The definitions text of a request body: YAML as sent, or a JSON object written out
    as YAML (so that the one loader reads both, and numbers keep YAML's reading)."""
    media, _, parameters = (content_type or "").partition(";")
    media = media.strip().lower()
    if media not in YAML_TYPES and media != JSON_TYPE:
        accepted = ", ".join(sorted(YAML_TYPES | {JSON_TYPE}))
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the definitions as one of {accepted}, not {media or 'no Content-Type'!r}",
        )
    charset = _charset(parameters)
    if charset not in (None, "utf-8", "utf8", "us-ascii"):
        raise ApiError(415, "unsupported_media_type", f"the body must be UTF-8, not {charset}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_body", f"the body is not UTF-8 text (byte {exc.start} is not)"
        ) from None
    return text if media != JSON_TYPE else _json_as_yaml(text)


def _charset(parameters: str) -> str | None:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _json_as_yaml(text: str) -> str:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        # json keeps the last of two equal keys without a word; YAML input reports them.
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    too_deep = "the document nests too deeply to be definitions"
    try:
        # json, not orjson: only json has a hook that sees every key of an object.
        data = json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise invalid([f"JSON syntax error: {exc}"]) from None
    except RecursionError:
        raise invalid([too_deep]) from None
    if duplicates:
        raise invalid([f"duplicate key {key!r} in the JSON document" for key in duplicates])
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except RecursionError:
        raise invalid([too_deep]) from None


def invalid(messages: list[str]) -> ApiError:
    """422 for problems found before the loader could see the document."""
    return _invalid(DefinitionError([Problem(None, None, message) for message in messages]))


def _invalid(error: DefinitionError) -> ApiError:
    problems = [
        {"dimension": p.dimension, "rule": p.rule, "message": p.message} for p in error.problems
    ]
    count = len(problems)
    return ApiError(
        422,
        "invalid_definitions",
        f"{count} problem{'s' if count != 1 else ''}",
        problems=problems,
    )


async def load(parser: DefinitionsParser, text: str) -> Definitions:
    """Parsed and validated, or 422 with every problem the loader found."""
    try:
        return await parser.parse(text)
    except DefinitionError as exc:
        raise _invalid(exc) from None


async def summary(
    conn: asyncpg.Connection, parser: DefinitionsParser, definitions: Definitions
) -> DefinitionsSummary:
    current = await store.in_force(conn)
    old = None if current is None else await parser.parse(current.content)
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
    content: str,
    *,
    replaces: int | None,
    actor: str,
    note: str,
    publish: Publish,
) -> VersionView:
    """Put `content` in force; 422 if invalid, 409 if `replaces` is no longer in force."""
    try:
        stored = await activate_content(
            conn, content, replaces=replaces, actor=actor, note=note, publish=publish
        )
    except DefinitionError as exc:
        raise _invalid(exc) from None
    except ActivationConflictError as exc:
        raise ApiError(409, "definitions_conflict", str(exc)) from None
    return version_view(stored, stored.version, await store.get_backfill(conn, stored.version))


# Diffs ------------------------------------------------------------------------------------
async def diff_view(parser: DefinitionsParser, old: StoredVersion, new: StoredVersion) -> DiffView:
    result = diff_definitions(await parser.parse(old.content), await parser.parse(new.content))
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
