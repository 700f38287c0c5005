"""/v1/definitions: validate, preview, activate, list, compare and roll back definitions.

Reads need `definitions:read`; previews (their samples are customer data), activations and
rollbacks `definitions:write`. Writes are audited in the transaction that makes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from services.api.auth import repository as audit
from services.api.auth.keys import Principal
from services.api.auth.repository import AuditEntry
from services.api.definitions import documents, repository, service
from services.api.definitions.schemas import (
    VERSION_MAX,
    ActivationRequest,
    DefinitionsSummary,
    DiffView,
    PreviewRequest,
    PreviewView,
    RollbackRequest,
    VersionDetail,
    VersionPage,
    VersionView,
)
from services.api.deps import DefinitionsReader, DefinitionsWriter, ResourcesDep
from services.api.errors import ApiError, error_responses
from services.api.pagination import decode_int_cursor, encode_cursor
from services.api.resources import Resources
from shared.definitions import repository as store
from shared.definitions.activation import RetentionRows

router = APIRouter(prefix="/v1/definitions", tags=["definitions"])

VERSIONS_CURSOR = "d"
VersionPath = Annotated[int, Path(ge=1, le=VERSION_MAX)]
PreviewId = Annotated[
    str,
    Path(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
]

# The body is read raw (YAML or JSON), so FastAPI cannot describe it from a model.
_DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The definitions document: YAML, or the same document as a JSON object",
        "content": {
            **{media: {"schema": {"type": "string"}} for media in sorted(documents.YAML_TYPES)},
            documents.JSON_TYPE: {"schema": {"type": "object"}},
        },
    }
}


def _entry(who: Principal, action: str, detail: dict[str, Any]) -> AuditEntry:
    return AuditEntry(datetime.now(UTC), who.actor, who.key_id, action, detail=detail)


async def _retention(resources: Resources) -> RetentionRows:
    """What ingest keeps, for a candidate's windows to be checked against."""
    async with resources.db.read() as conn:
        return await repository.ingest_retention(conn)


def _activation_timeout(resources: Resources) -> float:
    return resources.settings.activation_timeout_ms / 1000


@router.post(
    "/validate",
    response_model=DefinitionsSummary,
    responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=_DOCUMENT_BODY,
)
async def validate(
    request: Request, resources: ResourcesDep, who: DefinitionsReader
) -> DefinitionsSummary:
    """Check a definitions document (YAML or JSON) and summarise it; nothing is stored."""
    text = documents.read_document(request.headers.get("content-type"), await request.body())
    definitions = await documents.load(resources.parser, text, await _retention(resources))
    async with resources.db.read() as conn:
        return await service.summary(conn, resources.parser, definitions)


@router.post(
    "/previews",
    status_code=202,
    response_model=PreviewView,
    responses=error_responses(401, 403, 409, 413, 422, 503),
)
async def create_preview(
    body: PreviewRequest, response: Response, resources: ResourcesDep, who: DefinitionsWriter
) -> PreviewView:
    """Start a preview of candidate definitions against the version in force; poll Location."""
    definitions = await documents.load(resources.parser, body.content, await _retention(resources))
    async with resources.db.transaction() as conn:
        preview = await service.create_preview(
            conn,
            definitions,
            actor=who.actor,
            samples=body.samples,
            keep_seconds=resources.settings.preview_keep_seconds,
        )
        detail = {
            "preview_id": preview.id,
            "base_version": preview.base_version,
            "content_hash": preview.content_hash,
            "samples": preview.samples,
        }
        await audit.insert_audit(conn, [_entry(who, "definitions.preview.create", detail)])
    response.headers["Location"] = f"{router.prefix}/previews/{preview.id}"
    return service.preview_view(preview)


@router.get(
    "/previews/{preview_id}",
    response_model=PreviewView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_preview(
    preview_id: PreviewId, resources: ResourcesDep, who: DefinitionsWriter
) -> PreviewView:
    """A preview's status and progress, and when done its result (sizes and sample moves)."""
    async with resources.db.read() as conn:
        preview = await store.get_preview(conn, preview_id)
    if preview is None:
        raise service.preview_not_found(preview_id)
    detail = {
        "preview_id": preview.id,
        "status": preview.status,
        "sampled_customers": service.sampled_customers(preview.result),
    }
    resources.audit.record(_entry(who, "definitions.preview.read", detail))
    return service.preview_view(preview)


@router.delete(
    "/previews/{preview_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def cancel_preview(
    preview_id: PreviewId, resources: ResourcesDep, who: DefinitionsWriter
) -> Response:
    """Cancel a pending or running preview; 409 if it has already finished."""
    async with resources.db.transaction() as conn:
        preview = await service.cancel_preview(conn, preview_id)
        detail = {"preview_id": preview.id}
        await audit.insert_audit(conn, [_entry(who, "definitions.preview.cancel", detail)])
    return Response(status_code=204)


@router.get("", response_model=VersionPage, responses=error_responses(401, 403, 422, 503))
async def list_versions(
    resources: ResourcesDep,
    who: DefinitionsReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> VersionPage:
    """Every stored version, newest first, with the one in force and backfill progress."""
    before = None if cursor is None else decode_int_cursor(VERSIONS_CURSOR, cursor)
    if before is not None and before > VERSION_MAX:
        raise ApiError(422, "invalid_cursor", "cursor is not one this listing returned")
    async with resources.db.read() as conn:
        in_force, items, more = await service.versions_page(conn, before, limit)
    next_cursor = encode_cursor(VERSIONS_CURSOR, str(items[-1].version)) if more else None
    return VersionPage(in_force=in_force, items=items, next_cursor=next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=VersionView,
    responses=error_responses(401, 403, 409, 413, 422, 503),
)
async def activate(
    body: ActivationRequest, response: Response, resources: ResourcesDep, who: DefinitionsWriter
) -> VersionView:
    """Put definitions in force as a new version; 409 if `replaces` is no longer in force."""
    retention = await _retention(resources)
    await documents.load(resources.parser, body.content, retention)  # 422 before any lock
    async with resources.db.transaction(_activation_timeout(resources)) as conn:
        view = await service.activate(
            conn,
            resources.parser,
            body.content,
            replaces=body.replaces,
            actor=who.actor,
            note=body.note,
            publish=body.publish,
            retention=retention,
        )
        await audit.insert_audit(conn, [_entry(who, "definitions.activate", _activated(view))])
    response.headers["Location"] = f"{router.prefix}/{view.version}"
    return view


def _activated(view: VersionView) -> dict[str, Any]:
    return {
        "version": view.version,
        "replaces": view.replaces,
        "content_hash": view.content_hash,
        "changed_dimensions": view.changed_dimensions,
        "publish": view.publish,
        "note": view.note,
    }


@router.get(
    "/{version}", response_model=VersionDetail, responses=error_responses(401, 403, 404, 422, 503)
)
async def get_version(
    version: VersionPath, resources: ResourcesDep, who: DefinitionsReader
) -> VersionDetail:
    """One stored version, with its content."""
    async with resources.db.read() as conn:
        return await service.version_detail(conn, version)


@router.get(
    "/{a}/diff/{b}",
    response_model=DiffView,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def diff_versions(
    a: VersionPath, b: VersionPath, resources: ResourcesDep, who: DefinitionsReader
) -> DiffView:
    """What changes from version a to version b, per dimension and segment, and as text."""
    async with resources.db.read() as conn:
        old = await service.stored_version(conn, a)
        new = await service.stored_version(conn, b)
    return await service.diff_view(resources.parser, old, new)


@router.post(
    "/{version}/rollback",
    status_code=201,
    response_model=VersionView,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def rollback(
    version: VersionPath,
    body: RollbackRequest,
    response: Response,
    resources: ResourcesDep,
    who: DefinitionsWriter,
) -> VersionView:
    """Put an earlier version's content back in force, as a new version."""
    async with resources.db.read() as conn:
        target = await service.stored_version(conn, version)
        # A rollback is an activation: the windows must fit what ingest keeps today.
        retention = await repository.ingest_retention(conn)
    await documents.load(resources.parser, target.content, retention)  # before any lock
    async with resources.db.transaction(_activation_timeout(resources)) as conn:
        view = await service.activate(
            conn,
            resources.parser,
            target.content,
            replaces=body.replaces,
            actor=who.actor,
            note=body.note or f"rollback to version {version}",
            publish=body.publish,
            retention=retention,
        )
        detail = _activated(view) | {"rollback_to": version}
        await audit.insert_audit(conn, [_entry(who, "definitions.rollback", detail)])
    response.headers["Location"] = f"{router.prefix}/{view.version}"
    return view
