"""GET /v1/segments/{dimension}/{segment}/members/export: every member of a segment or an
audience, as CSV or NDJSON, equal to customer_segments row for row once parsed back; the
format by `format=` or Accept; 404 for what is not in force; the scope."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import pg_connection
from shared.definitions.activation import activate_content
from shared.segmentation import default_definitions
from shared.settings import ConnectionSettings
from tests.conftest import eventually
from tests.integration.test_api_support import (
    audit_rows,
    bearer,
    make_key,
    running_api,
    seed_definitions,
    unit_of_work,
)

pytestmark = pytest.mark.integration

CHUNK_ROWS = 500
AUDIENCE = "\naudiences:\n  recent_buyers: days_since_last_order < 20\n"
# Reasons as CSV and JSON must carry them: separators, quotes, line ends, non-ASCII.
REASONS = [
    "days_since_last_order < 90",
    'spend_365d >= 428.28, and "quoted"',
    "two\nlines\r\nand a CR\r",
    "Grüße, naïve café; 東京 🛒",
    "back\\slash and\ttab",
    "",
]
Row = tuple[str, datetime, str]


@pytest.fixture
async def members(engine: AsyncEngine) -> dict[tuple[str, str], list[Row]]:
    """Rows straight into customer_segments, as the segmenter writes them; the segment
    `active` a multiple of the chunk size, the audience not."""
    version = await seed_definitions(engine)
    async with pg_connection(engine) as conn, conn.transaction():
        content = default_definitions().source + AUDIENCE
        await activate_content(conn, content, replaces=version, actor="test", publish="none")
    rng = random.Random(5)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sizes = {("lifecycle", "active"): 3000, ("lifecycle", "churned"): 400}
    sizes[("recent_buyers", "member")] = 1234
    out: dict[tuple[str, str], list[Row]] = {}
    for (dimension, segment), size in sizes.items():
        ids = rng.sample(range(10_000), size)  # a customer is in one segment per dimension
        out[(dimension, segment)] = sorted(
            (
                f"c-{i:05d}" if dimension != "lifecycle" or segment == "active" else f"d-{i:05d}",
                start + timedelta(microseconds=rng.randrange(10**13)),
                rng.choice(REASONS),
            )
            for i in ids
        )
    async with unit_of_work(engine) as conn:
        for (dimension, segment), rows in out.items():
            await conn.copy_records_to_table(
                "customer_segments",
                records=[(c, dimension, segment, s, r, 2, s) for c, s, r in rows],
                columns=[
                    "customer_id",
                    "dimension",
                    "segment",
                    "since",
                    "reason",
                    "definition_version",
                    "evaluated_at",
                ],
            )
    return out


@pytest.fixture
async def client(settings: ConnectionSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, export_chunk_rows=CHUNK_ROWS) as (_, http):
        yield http


def from_csv(body: str) -> list[Row]:
    reader = csv.reader(io.StringIO(body, newline=""))
    assert next(reader) == ["customer_id", "since", "reason"]
    return [(c, datetime.fromisoformat(s), r) for c, s, r in reader]


def from_ndjson(body: bytes) -> list[Row]:
    assert body == b"" or body.endswith(b"\n")
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert all(set(x) == {"customer_id", "since", "reason"} for x in lines)
    return [(x["customer_id"], datetime.fromisoformat(x["since"]), x["reason"]) for x in lines]


async def test_exports_equal_customer_segments_in_both_formats(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    members: dict[tuple[str, str], list[Row]],
) -> None:
    reader = bearer(await make_key(engine, "segments:read"))
    for (dimension, segment), expected in members.items():
        path = f"/v1/segments/{dimension}/{segment}/members/export"
        r = await client.get(path, headers=reader, params={"format": "csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert r.headers["content-disposition"] == (
            f'attachment; filename="{dimension}-{segment}-members.csv"'
        )
        assert from_csv(r.text) == expected, (dimension, segment)

        r = await client.get(path, headers=reader | {"Accept": "application/x-ndjson"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["content-disposition"].endswith('-members.ndjson"')
        assert from_ndjson(r.content) == expected, (dimension, segment)

    # Empty, yet in force: a header alone, or nothing.
    empty = "/v1/segments/lifecycle/prospect/members/export"
    r = await client.get(empty, headers=reader)
    assert (r.status_code, r.text) == (200, "customer_id,since,reason\r\n")
    r = await client.get(empty, headers=reader, params={"format": "ndjson"})
    assert (r.status_code, r.content) == (200, b"")

    async def exports() -> list[dict[str, object]]:
        return [dict(r["detail"]) for r in await audit_rows(engine, "segment.members.export")]

    async def all_logged() -> bool:
        return len(await exports()) == 8

    await eventually(all_logged, message="every export audited")
    logged = await exports()
    assert logged[0] == {
        "dimension": "lifecycle",
        "segment": "active",
        "format": "csv",
        "count": 3000,
        "complete": True,
    }


async def test_the_format_by_accept_or_parameter(
    engine: AsyncEngine, client: httpx.AsyncClient, members: dict[tuple[str, str], list[Row]]
) -> None:
    reader = bearer(await make_key(engine, "segments:read"))
    path = "/v1/segments/lifecycle/churned/members/export"
    for accept, kind in [
        (None, "text/csv"),
        ("*/*", "text/csv"),
        ("text/csv", "text/csv"),
        ("application/json;q=0.9, application/x-ndjson", "application/x-ndjson"),
        ("text/csv;q=0.5, application/jsonl;q=0.8", "application/x-ndjson"),
        ("application/*", "application/x-ndjson"),
    ]:
        headers = reader | ({"Accept": accept} if accept else {})
        r = await client.get(path, headers=headers)
        assert r.status_code == 200, (accept, r.text)
        assert r.headers["content-type"].split(";")[0] == kind, accept
    # The parameter wins over Accept.
    r = await client.get(path, headers=reader | {"Accept": "text/csv"}, params={"format": "ndjson"})
    assert r.headers["content-type"] == "application/x-ndjson"
    assert len(from_ndjson(r.content)) == 400

    r = await client.get(path, headers=reader | {"Accept": "application/xml"})
    assert (r.status_code, r.json()["error"]) == (406, "not_acceptable")
    assert "format=csv" in r.json()["detail"]
    r = await client.get(path, headers=reader, params={"format": "xml"})
    assert r.status_code == 422


async def test_what_is_not_in_force_is_404_and_the_scope_is_needed(
    engine: AsyncEngine, client: httpx.AsyncClient, members: dict[tuple[str, str], list[Row]]
) -> None:
    reader = bearer(await make_key(engine, "segments:read"))
    writer = bearer(await make_key(engine, "events:write", "traits:write", "definitions:read"))
    for path, error in [
        ("/v1/segments/nope/active/members/export", "dimension_not_found"),
        ("/v1/segments/lifecycle/nope/members/export", "segment_not_found"),
        ("/v1/segments/recent_buyers/active/members/export", "segment_not_found"),
    ]:
        r = await client.get(path, headers=reader)
        assert (r.status_code, r.json()["error"]) == (404, error), path
    ok = "/v1/segments/lifecycle/active/members/export"
    r = await client.get(ok, headers=writer)
    assert r.status_code == 403
    assert "segments:read" in r.json()["detail"]
    assert (await client.get(ok)).status_code == 401
    assert (
        await client.get("/v1/segments/a-b/active/members/export", headers=reader)
    ).status_code == 422
