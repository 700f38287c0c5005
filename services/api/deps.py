"""Typed dependency aliases: the lifespan's resources and the caller's API key.

Each dependency takes only the request: FastAPI resolves a dependency tree on every request,
and on the cached read that costs more than the read. The security schemes are therefore
declared in the OpenAPI document by hand (`openapi_security`), not as sub-dependencies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import Headers

from services.api.auth.keys import Principal, Scope
from services.api.errors import ApiError
from services.api.resources import Resources


async def get_resources(request: Request) -> Resources:
    # async, so FastAPI calls it inline rather than in a worker thread
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]

_CHALLENGE = 'Bearer realm="streamseg"'
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Bearer <API key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The key"},
}
# Either scheme will do: two alternative requirement objects.
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def presented_key(headers: Headers) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key`."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return headers.get("x-api-key") or None


async def authorize(resources: Resources, headers: Headers, scope: Scope) -> Principal:
    """The caller's key if it is valid, unrevoked and holds `scope`; else an ApiError."""
    presented = presented_key(headers)
    if not presented:
        raise ApiError(
            401,
            "unauthorized",
            "send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            {"WWW-Authenticate": _CHALLENGE},
        )
    found = await resources.keys.verify(presented)
    if found is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is unknown or revoked",
            {"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    if scope not in found.scopes:
        raise ApiError(
            403,
            "insufficient_scope",
            f"this endpoint needs an API key with the scope {scope!r}",
            {"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'},
        )
    return found


def require(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits a valid, unrevoked key holding `scope`."""

    async def principal(request: Request) -> Principal:
        return await authorize(request.app.state.resources, request.headers, scope)

    return principal


Reader = Annotated[Principal, Depends(require("segments:read"))]
DefinitionsReader = Annotated[Principal, Depends(require("definitions:read"))]
DefinitionsWriter = Annotated[Principal, Depends(require("definitions:write"))]
TraitsWriter = Annotated[Principal, Depends(require("traits:write"))]
EventsWriter = Annotated[Principal, Depends(require("events:write"))]
WebhooksReader = Annotated[Principal, Depends(require("webhooks:read"))]
WebhooksWriter = Annotated[Principal, Depends(require("webhooks:write"))]
Admin = Annotated[Principal, Depends(require("admin"))]
