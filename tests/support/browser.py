"""Debian's Chromium driven by Playwright, as a person's browser would open the pages.

Never a downloaded browser: the test script installs Debian's `chromium` (deploy/test.sh),
and Playwright only drives it. The flags keep it off the network (this machine has none)
and out of any profile of the user's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response, async_playwright

CHROMIUM = os.environ.get("STREAMSEG_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(
    os.environ.get(
        "STREAMSEG_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".artifacts" / "browser"
    )
)


def chromium_path() -> str:
    """The browser, or a failure naming how to install it (never a skip)."""
    found = shutil.which(CHROMIUM)
    if found is None:
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install chromium (deploy/test.sh does)")
    return found


@dataclass
class Watched:
    """What a page reported that a person would call broken, and every URL it asked for."""

    page: Page
    problems: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    async def screenshot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        # Playwright creates the directory.
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def watched_page(b: Browser) -> Watched:
    """A new page whose console errors, uncaught errors and failed responses are recorded."""
    context = await b.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.problems.append(f"console: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            watched.problems.append(f"HTTP {response.status}: {response.url}")

    def on_request(request: Request) -> None:
        watched.urls.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
    page.on("response", on_response)
    page.on("request", on_request)
    return watched
