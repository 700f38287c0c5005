"""GET /v1/customers/{id}/segments as a raw ASGI app in front of FastAPI.

The storefronts' read is the one hot request, and FastAPI's routing, dependency solving and
response validation cost more CPU than the read itself (docs/performance.md). This answers it
with the route's own code (the key check, `read_segments`, the response model's serializer and
the error bodies), so the answer is the same byte for byte. Whatever it does not recognise
(another method, an id the route would refuse with 422, a root path) goes on to FastAPI, whose
route stays the documented one and answers the same request the same way.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.customers.routes import read_segments
from services.api.customers.schemas import CustomerSegments
from services.api.deps import authorize
from services.api.errors import ApiError, error_response
from services.api.resources import Resources
from shared.events.limits import ID_CHARSET, ID_MAX_LENGTH

# Only ids the route accepts: any other goes on to FastAPI for its 422. A full match of an
# explicit class, because Python's `$` would also accept a trailing newline (%0A).
_PATH = re.compile(rf"/v1/customers/([{ID_CHARSET}]{{1,{ID_MAX_LENGTH}}})/segments")
# FastAPI serializes a response model with a TypeAdapter's dump_json; so does this.
_BODY = TypeAdapter(CustomerSegments)


class SegmentsFastPath:
    """ASGI middleware; `route` is the FastAPI route it stands in for, whose template the
    metrics middleware reads from the scope as it does after Starlette's routing."""

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path")
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        resources: Resources = scope["app"].state.resources
        try:
            who = await authorize(resources, Headers(scope=scope), "segments:read")
            result = await read_segments(resources, who, match.group(1))
        except ApiError as exc:
            await error_response(exc.status, exc.error, exc.detail, exc.headers)(
                scope, receive, send
            )
            return
        body = _BODY.dump_json(result, by_alias=True)
        # The headers of Starlette's Response, in its order.
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
