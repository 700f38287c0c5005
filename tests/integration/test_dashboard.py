"""The dashboard, Swagger UI and ReDoc in a real browser (Debian's Chromium driven by
Playwright), against real API and segmenter processes on a seeded run.

Screenshots are kept under .artifacts/browser/ (STREAMSEG_TEST_ARTIFACTS).
"""

from __future__ import annotations

import html.parser
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.web.routes import CONTENT_SECURITY_POLICY
from shared.db.engine import pg_connection
from shared.segmentation.facts import Interaction
from tests.conftest import MakeTopic, eventually
from tests.integration.test_api_support import api_process, bearer, make_key
from tests.integration.test_segmenter import random_histories
from tests.support.browser import Watched, browser, watched_page
from tests.support.segmenter import History, run_segmenter, seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CUSTOMERS = 80
FEED_WAIT_MS = 30_000  # the bound for a change to reach the feed (bench/ measures it)


@dataclass
class Run:
    url: str
    key: str
    engine: AsyncEngine
    segmenter: subprocess.Popen[bytes]


@pytest.fixture
async def run(
    engine: AsyncEngine, service_env: dict[str, str], make_topic: MakeTopic, tmp_path: Path
) -> AsyncIterator[Run]:
    """Seeded customers evaluated by a real segmenter, a day of size history before them,
    and the API serving it all."""
    now = datetime.now(UTC)
    await seed(engine, random_histories(CUSTOMERS, 11, now), now)
    env = service_env | {
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": await make_topic("changes", 1),
        "STREAMSEG_SEGMENTER_OPS_PORT": "0",
        "STREAMSEG_SEGMENTER_SIZES_FOLD_INTERVAL_SECONDS": "0.5",
        "STREAMSEG_SEGMENTER_PREVIEW_POLL_SECONDS": "0.2",
        "STREAMSEG_LOG_JSON": "false",
    }
    segmenter = run_segmenter(env, tmp_path / "segmenter.log")
    try:

        async def evaluated() -> bool:
            assert segmenter.poll() is None, (tmp_path / "segmenter.log").read_text()
            async with pg_connection(engine) as conn:
                left = await conn.fetchval(
                    "SELECT count(*) FROM segmentation_queue WHERE due_at <= now()"
                )
                evaluations = await conn.fetchval("SELECT count(*) FROM customer_evaluations")
                snapshots = await conn.fetchval("SELECT count(*) FROM segment_size_snapshots")
            return bool(left == 0 and evaluations == CUSTOMERS and snapshots > 0)

        await eventually(evaluated, within_seconds=60, message="the seeded run evaluated")
        await seed_size_history(engine, now)
        key = await make_key(
            engine, "segments:read", "definitions:read", "definitions:write", name="browser"
        )
        async with api_process(
            service_env, {"STREAMSEG_API_STREAM_POLL_INTERVAL_MS": "100"}
        ) as api:
            yield Run(api.url, key, engine, segmenter)
    finally:
        segmenter.kill()
        segmenter.wait(10)


async def seed_size_history(engine: AsyncEngine, now: datetime) -> None:
    """The 5-minute snapshots of the day before the run, as if it had run for a day: the
    totals now, scaled down the further back (the run itself took the latest snapshot)."""
    async with pg_connection(engine) as conn:
        totals = await conn.fetch("SELECT dimension, segment, customers FROM segment_sizes")
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
        rows = []
        for i in range(1, 288):
            at = start - timedelta(minutes=5 * i)
            for r in totals:
                n = int(r["customers"] * (288 - i) / 288)
                if n:
                    rows.append((300, at, r["dimension"], r["segment"], n))
        await conn.executemany(
            "INSERT INTO segment_size_snapshots VALUES ($1, $2, $3, $4, $5)", rows
        )


async def sign_in(page: Page, run: Run) -> None:
    await page.goto(f"{run.url}/dashboard")
    await page.get_by_label("API key").fill(run.key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("tab", name="Sizes")).to_have_attribute("aria-selected", "true")


def assert_clean(watched: Watched, run: Run) -> None:
    assert watched.problems == []
    assert not [u for u in watched.urls if run.key in u], "the key appeared in a URL"


async def test_the_dashboard_shows_a_seeded_run_and_its_live_changes(run: Run) -> None:
    async with browser() as b:
        watched = await watched_page(b)
        page = watched.page
        await sign_in(page, run)

        # Sizes: one stacked-area chart per dimension, drawn from the API's snapshots.
        async with httpx.AsyncClient(base_url=run.url, headers=bearer(run.key)) as http:
            sizes = (await http.get("/v1/stats/sizes")).json()
        lifecycle = page.locator('figure[data-dimension="lifecycle"]')
        await expect(lifecycle.locator("svg path").first).to_be_attached()
        points = int(await lifecycle.locator(".chart").get_attribute("data-points") or 0)
        assert (
            points == len(sizes["at"]) >= 250
        )  # a day of 5-minute snapshots, the emptiest left out
        latest = {
            s["segment"]: s["customers"][-1]
            for s in sizes["series"]
            if s["dimension"] == "lifecycle"
        }
        shown = await table_rows(lifecycle.locator("table"))
        assert {seg: int(n) for seg, n in shown} == latest
        assert sum(latest.values()) == CUSTOMERS
        await watched.screenshot("sizes")
        await expect_contrast(page)

        # Keyboard: the arrow keys move between tabs.
        await page.get_by_role("tab", name="Sizes").focus()
        await page.keyboard.press("ArrowRight")
        await expect(page.get_by_role("tab", name="Flow")).to_have_attribute(
            "aria-selected", "true"
        )
        await expect(page.locator("#flow-chart svg path").first).to_be_attached()
        async with pg_connection(run.engine) as conn:
            moved = await conn.fetchval(
                "SELECT count(*) FROM segment_history WHERE dimension = 'lifecycle'"
            )
        assert moved >= CUSTOMERS
        cells = await page.locator("#flow-matrix td.heat").all_inner_texts()
        assert sum(int(c) for c in cells if c) == moved
        await watched.screenshot("flow")
        await expect_contrast(page)

        # Live: a change the segmenter commits reaches the feed.
        await page.get_by_role("tab", name="Live changes").click()
        await expect(page.locator("#live-status")).to_contain_text("Connected", timeout=10_000)
        now = datetime.now(UTC)
        newcomer = History(
            "live-newcomer",
            orders=[(now - timedelta(hours=1), Decimal("42.00"))],
            interactions=[Interaction(now - timedelta(minutes=5), "page_view")],
        )
        await seed(run.engine, [newcomer], now)
        item = page.locator('#live-feed li[data-customer="live-newcomer"]').first
        await expect(item).to_be_visible(timeout=FEED_WAIT_MS)
        await page.get_by_label("Customer or segment contains").fill("nobody-has-this-id")
        await expect(item).to_be_hidden()
        await page.get_by_label("Customer or segment contains").fill("newcomer")
        await expect(item).to_be_visible()
        await watched.screenshot("live")
        await expect_contrast(page)

        # Customer: its segments with reasons, and its history as a timeline.
        await item.get_by_role("button", name="live-newcomer").click()
        await expect(page.get_by_role("tab", name="Customer")).to_have_attribute(
            "aria-selected", "true"
        )
        async with pg_connection(run.engine) as conn:
            history = await conn.fetchval(
                "SELECT count(*) FROM segment_history WHERE customer_id = 'live-newcomer'"
            )
        timeline = page.locator("#customer-view ol.timeline li")
        await expect(timeline).to_have_count(history)
        async with httpx.AsyncClient(base_url=run.url, headers=bearer(run.key)) as http:
            current = (await http.get("/v1/customers/live-newcomer/segments")).json()
        for assignment in current["segments"].values():
            await expect(page.locator("#customer-view table").first).to_contain_text(
                assignment["reason"]
            )
        await watched.screenshot("customer")
        await expect_contrast(page)

        # Definitions: preview a candidate, activate it, and the diff shows what changed.
        await page.get_by_role("tab", name="Definitions").click()
        content = page.get_by_label("Candidate definitions (YAML)")
        await expect(content).to_have_value(containing("days_since_last_interaction < 7"))
        text = await content.input_value()
        candidate = text.replace(
            "days_since_last_interaction < 7", "days_since_last_interaction < 10"
        ).replace("days_since_last_interaction >= 7 and", "days_since_last_interaction >= 10 and")
        assert candidate != text
        await content.fill(candidate)
        await page.get_by_label("Note for the activation").fill("engaged is 10 days")
        await page.get_by_role("button", name="Preview").click()
        await expect(page.locator("#preview-status")).to_contain_text(
            "Preview done", timeout=60_000
        )
        await expect(page.locator("#preview-view")).to_contain_text("engagement")
        await page.get_by_role("button", name="Activate").click()
        await expect(page.locator("#preview-status")).to_contain_text("Activated version 2")
        await page.get_by_label("From version").select_option("1")
        await page.get_by_label("To version").select_option("2")
        await page.get_by_role("button", name="Compare").click()
        diff = page.locator("#diff-view")
        await expect(diff).to_contain_text("engaged")
        await expect(diff.locator("pre.diff .add")).not_to_have_count(0)
        await watched.screenshot("definitions")
        await expect_contrast(page)
        async with pg_connection(run.engine) as conn:
            assert await conn.fetchval("SELECT version FROM definitions_in_force") == 2

        await expect_labelled(page)
        assert_clean(watched, run)


def containing(fragment: str) -> re.Pattern[str]:
    return re.compile(".*" + re.escape(fragment) + ".*", re.S)


async def table_rows(table: Any) -> list[tuple[str, str]]:
    rows = await table.locator("tbody tr").all()
    out = []
    for row in rows:
        cells = await row.locator("td").all_inner_texts()
        out.append((cells[0], cells[1]))
    return out


_LOW_CONTRAST = (Path(__file__).parents[1] / "support" / "contrast.js").read_text()


async def expect_contrast(page: Page) -> None:
    """Every visible text of the page (the charts' SVG apart) meets WCAG AA contrast."""
    assert await page.evaluate(_LOW_CONTRAST) == []


async def expect_labelled(page: Page) -> None:
    """Every form control has an accessible name (a label, or aria-label)."""
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !(e.textContent || '').trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabelled == []


class _Scripts(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open = dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._open is not None and "src" not in self._open and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


PAGES = [("/dashboard/", "Sign in"), ("/docs", "StreamSeg"), ("/redoc", "StreamSeg")]


def script_sources(page_html: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page_html)


async def test_pages_work_offline_under_a_policy_without_inline_scripts(run: Run) -> None:
    async with browser() as b:
        for path, shows in PAGES:
            async with httpx.AsyncClient(base_url=run.url) as http:
                r = await http.get(path)
            assert r.status_code == 200
            assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            scripts = _Scripts()
            scripts.feed(r.text)
            assert scripts.inline == [], path
            assert script_sources(r.text)
            assert all(
                src.startswith("/") and not src.startswith("//") for src in script_sources(r.text)
            )
            watched = await watched_page(b)
            await watched.page.goto(f"{run.url}{path}")
            await expect(watched.page.get_by_text(shows).first).to_be_visible(timeout=20_000)
            await watched.page.wait_for_load_state("networkidle")
            await watched.screenshot(path.strip("/").replace("/", "_"))
            # Only this origin was asked for anything: no CDN.
            own = (run.url, "data:", f"blob:{run.url}")
            assert all(u.startswith(own) for u in watched.urls), watched.urls
            assert_clean(watched, run)

        # A key the API refuses is said so, and not kept.
        watched = await watched_page(b)
        page = watched.page
        await page.goto(f"{run.url}/dashboard/")
        await page.get_by_label("API key").fill("ssk_000000000000_" + "x" * 43)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#sign-in-error")).to_contain_text("invalid_api_key")
        assert await page.evaluate("() => sessionStorage.length") == 0
        # The one failure is the refused key itself, as the browser logs it.
        assert watched.problems
        assert all("401" in p for p in watched.problems), watched.problems
