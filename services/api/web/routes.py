"""The pages a browser opens: the dashboard (/dashboard) and the API reference (/docs,
/redoc), all from assets in the package, so they work offline.

The assets under static/ are built from dashboard/ (deploy/dashboard.sh rebuilds them and
fails if they differ from the committed ones). Every page is sent with a
Content-Security-Policy that allows scripts from this origin only: no inline script, no
CDN. Styles may be inline (`style-src 'unsafe-inline'`): ReDoc and the charts set them from
script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(*parts: str) -> HTMLResponse:
    path = STATIC.joinpath(*parts)
    if not path.is_file():
        # A checkout without the built assets: say how to build them, rather than a bare 404.
        return HTMLResponse(
            "<!doctype html><title>Not built</title><p>The dashboard's assets are missing: "
            "run <code>bash deploy/dashboard.sh --write</code>.</p>",
            status_code=503,
            headers=_PAGE_HEADERS,
        )
    return HTMLResponse(path.read_text(), headers=_PAGE_HEADERS)


@router.get("/dashboard")
async def dashboard_redirect() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=308)


@router.get("/dashboard/")
async def dashboard() -> HTMLResponse:
    """The dashboard: sizes, flows, live changes, customers and definitions."""
    return _page("dashboard", "index.html")


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return _page("docs", "swagger.html")


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return _page("docs", "redoc.html")


class _NoSniff:
    """Static assets with nosniff, and long caching for hashed names (Vite's output)."""

    def __init__(self, app: ASGIApp, immutable: bool) -> None:
        self.app = app
        self.immutable = immutable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                cache = b"public, max-age=31536000, immutable" if self.immutable else b"no-cache"
                headers.append((b"cache-control", cache))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """The pages and their static assets (the directories need not exist yet)."""
    app.include_router(router)
    assets = StaticFiles(directory=STATIC / "dashboard" / "assets", check_dir=False)
    app.mount("/dashboard/assets", _NoSniff(assets, immutable=True), name="dashboard-assets")
    docs = StaticFiles(directory=STATIC / "docs", check_dir=False)
    app.mount("/static/docs", _NoSniff(docs, immutable=False), name="docs-assets")
