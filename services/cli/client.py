"""A small synchronous client of the HTTP API, whose failures are one typed error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from services.api.settings import ApiSettings

# The address `python -m services.api` listens on when nothing else is configured.
DEFAULT_URL = (
    f"http://{ApiSettings.model_fields['host'].default}:{ApiSettings.model_fields['port'].default}"
)


@dataclass
class ApiFailure(Exception):
    """The API answered with an error body, or could not be reached (`status` None)."""

    status: int | None
    error: str
    detail: str
    problems: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.error}: {self.detail}"


class ApiClient:
    def __init__(self, url: str, key: str, timeout_seconds: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            # An activation may wait on the segmenters' commits; the API bounds it.
            timeout=timeout_seconds,
        )

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (None when there is no body), or ApiFailure."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiFailure(
                None, "unreachable", f"cannot reach the API at {self.url}: {exc}"
            ) from exc
        if response.is_success:
            return response.json() if response.content else None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:200] or response.reason_phrase
            raise ApiFailure(
                response.status_code, "http_error", f"HTTP {response.status_code}: {text}"
            )
        problems = body.get("problems")
        raise ApiFailure(
            response.status_code,
            str(body.get("error", "error")),
            str(body.get("detail", "")),
            [p for p in problems if isinstance(p, dict)] if isinstance(problems, list) else [],
        )
