"""One JSON error body for every failure: `{"error": code, "detail": text}`."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": "customer_not_found", "detail": "no segments for customer c-1"}]
        }
    )

    error: str = Field(description="Stable machine-readable code")
    detail: str = Field(description="What went wrong, for a person")
    problems: list[dict[str, Any]] | None = Field(
        default=None, description="For validation errors: each problem with its location"
    )


class ApiError(Exception):
    """An expected failure that becomes an error body with `status`."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = dict(headers or {})
        self.problems = problems


def not_found(error: str, detail: str) -> ApiError:
    return ApiError(404, error, detail)


def error_response(
    status: int,
    error: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    problems: list[dict[str, Any]] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if problems is not None:
        body["problems"] = problems
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _code(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers, exc.problems)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, _code(exc.status_code), str(exc.detail), exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"location": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{p['location']}: {p['message']}" for p in problems)
    return error_response(422, "validation_error", detail or "invalid request", None, problems)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the error body."""
    text = {
        400: "The request body cannot be read",
        401: "Missing, unknown or revoked API key",
        403: "The key lacks the scope this endpoint needs",
        404: "Not found",
        406: "None of the media types in Accept can be produced",
        409: "Conflicts with the state the request expected",
        413: "Request body too large",
        415: "Unsupported Content-Type",
        422: "Invalid request",
        503: "A backing store did not answer in time",
    }
    return {s: {"model": ErrorBody, "description": text.get(s, _code(s))} for s in statuses}
