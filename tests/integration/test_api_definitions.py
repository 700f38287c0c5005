"""/v1/definitions over real PostgreSQL: validate, previews (the job rows only: the runner is
the segmenter's), activate, list, get, diff, rollback; scopes, audit, concurrent activations
and the activation's longer time-out."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.auth.keys import key_id_of
from shared.segmentation import load_definitions
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually
from tests.integration.test_api_support import (
    Customer,
    api_process,
    audit_rows,
    bearer,
    make_key,
    running_api,
    seed_database,
    seed_definitions,
    unit_of_work,
)

pytestmark = pytest.mark.integration

DEFAULT = (ROOT / "shared/segmentation/definitions/default.yaml").read_text()
# engaged within 10 days instead of 7: only the engagement dimension changes.
ENGAGED_10 = DEFAULT.replace(
    "engaged: days_since_last_interaction < 7",
    "engaged: days_since_last_interaction < 10",
).replace(
    "casual:  days_since_last_interaction >= 7 and",
    "casual:  days_since_last_interaction >= 10 and",
)
# Two broken rules in two dimensions: a misspelt metric, and a comparison with no value.
BROKEN = ENGAGED_10.replace(
    "engaged: days_since_last_interaction < 10", "engaged: days_since_last_interation < 10"
).replace("vip:    spend_365d >= vip_spend", "vip:    spend_365d >=")
YAML = {"Content-Type": "application/yaml"}
NOW = datetime.now(UTC)


@dataclass
class Keys:
    read: dict[str, str]
    write: dict[str, str]
    both: dict[str, str]
    segments: dict[str, str]
    both_id: str


@pytest.fixture
async def keys(engine: AsyncEngine) -> Keys:
    both = await make_key(engine, "definitions:read", "definitions:write", "segments:read")
    key_id = key_id_of(both)
    assert key_id is not None
    return Keys(
        read=bearer(await make_key(engine, "definitions:read")),
        write=bearer(await make_key(engine, "definitions:write")),
        both=bearer(both),
        segments=bearer(await make_key(engine, "segments:read")),
        both_id=key_id,
    )


@pytest.fixture
async def api(settings: ConnectionSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_api(settings, audit_flush_interval_ms=50) as running:
        yield running


@pytest.fixture
def client(api: tuple[FastAPI, httpx.AsyncClient], keys: Keys) -> httpx.AsyncClient:
    http = api[1]
    http.headers.update(keys.both)
    return http


async def activate(
    client: httpx.AsyncClient, content: str, replaces: int | None, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/v1/definitions", json={"content": content, "replaces": replaces, **extra}
    )


# Validate ---------------------------------------------------------------------------------
async def test_validate_summarises_a_document_against_the_version_in_force(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    await seed_definitions(engine)
    r = await client.post("/v1/definitions/validate", content=ENGAGED_10, headers=YAML)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = load_definitions(ENGAGED_10)
    assert body["content_hash"] == expected.content_hash
    assert body["description"] == expected.description
    assert body["in_force_version"] == 1
    assert body["changed_dimensions"] == ["engagement"]
    engagement = body["dimensions"][3]
    assert engagement == {
        "name": "engagement",
        "description": "Recency of interactions (page views, add-to-cart, ...).",
        "segments": ["engaged", "casual", "dormant", "none"],
        "metrics": ["days_since_last_interaction"],
    }
    assert body["dimensions"][0]["segments"][:2] == ["prospect", "reactivated"]
    assert {"days_in_segment", "previous"} <= set(body["dimensions"][0]["metrics"])
    assert body["cutoffs"][0] == {
        "name": "vip_spend",
        "metric": "spend_365d",
        "top_percent": 5.0,
        "value": None,
    }
    assert body["scores"][0] == {
        "name": "r_score",
        "metric": "days_since_last_order",
        "buckets": 5,
        "better": "lower",
    }
    # The same document as a JSON object, and as text/plain, is the same content.
    as_json = await client.post("/v1/definitions/validate", json=yaml.safe_load(ENGAGED_10))
    plain = await client.post(
        "/v1/definitions/validate",
        content=ENGAGED_10,
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert as_json.status_code == plain.status_code == 200, as_json.text
    assert as_json.json() == plain.json() == body


async def test_validate_reports_every_problem_with_its_dimension_and_rule(
    client: httpx.AsyncClient,
) -> None:
    for request in (
        {"content": BROKEN, "headers": YAML},
        {"json": yaml.safe_load(BROKEN)},
    ):
        r = await client.post("/v1/definitions/validate", **request)
        assert r.status_code == 422, r.text
        body = r.json()
        assert (body["error"], body["detail"]) == ("invalid_definitions", "2 problems")
        where = [(p["dimension"], p["rule"]) for p in body["problems"]]
        assert where == [("value_tier", "vip"), ("engagement", "engaged")]
        vip, engaged = (p["message"] for p in body["problems"])
        assert "column" in vip
        assert "days_since_last_interation" in engaged
        assert "days_since_last_interaction" in engaged  # the closest name, suggested
    # A coverage problem names a witness: engaged and casual overlap at 7 to 10 days.
    overlap = ENGAGED_10.replace(
        "casual:  days_since_last_interaction >= 10", "casual:  days_since_last_interaction >= 7"
    )
    r = await client.post("/v1/definitions/validate", content=overlap, headers=YAML)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["dimension"] == "engagement"
    assert "days_since_last_interaction=" in problem["message"]


async def test_windows_longer_than_ingest_keeps_are_refused_naming_the_setting(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    # The table ingest records its retention in (migration 0008), in that shape.
    async with unit_of_work(engine) as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ingest_retention"
            " (source text PRIMARY KEY, retention interval NOT NULL, setting text NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO ingest_retention VALUES ('interactions', interval '31 days', $1)"
            " ON CONFLICT (source) DO UPDATE SET retention = EXCLUDED.retention",
            "STREAMSEG_INGEST_INTERACTION_RETENTION_DAYS",
        )
    await seed_definitions(engine)

    def document(within: str) -> str:
        declared = f"metrics:\n  clicks: {{count: email_click, within: {within}}}\ndimensions:"
        return DEFAULT.replace("dimensions:", declared, 1)

    too_long = document("40d")
    for call in (
        client.post("/v1/definitions/validate", content=too_long, headers=YAML),
        client.post("/v1/definitions/previews", json={"content": too_long}),
        activate(client, too_long, 1),
    ):
        r = await call
        assert r.status_code == 422, r.text
        (problem,) = r.json()["problems"]
        assert problem["message"] == (
            "metric 'clicks': within 40d is longer than the 31 days interaction rows are kept "
            "(STREAMSEG_INGEST_INTERACTION_RETENTION_DAYS); shorten the window or raise the "
            "setting"
        )
    r = await client.post("/v1/definitions/validate", content=document("30d"), headers=YAML)
    assert r.status_code == 200, r.text


async def test_validate_refuses_bodies_it_cannot_read(
    settings: ConnectionSettings, keys: Keys
) -> None:
    async with running_api(settings, max_body_bytes=4096) as (_, client):
        client.headers.update(keys.read)
        url = "/v1/definitions/validate"
        xml = await client.post(url, content="<a/>", headers={"Content-Type": "application/xml"})
        untyped = await client.post(url, content=DEFAULT.encode())
        latin1 = await client.post(
            url, content="description: caf\xe9\n".encode("latin-1"), headers=YAML
        )
        big = await client.post(url, content=DEFAULT + "#" * 4096, headers=YAML)
        broken_json = await client.post(
            url, content=b'{"dimensions": ', headers={"Content-Type": "application/json"}
        )
        twice = await client.post(
            url,
            content=b'{"dimensions": {}, "dimensions": {}}',
            headers={"Content-Type": "application/json"},
        )
    assert (xml.status_code, xml.json()["error"]) == (415, "unsupported_media_type")
    assert "application/yaml" in xml.json()["detail"]
    assert untyped.status_code == 415
    assert (latin1.status_code, latin1.json()["error"]) == (400, "invalid_body")
    assert "not UTF-8" in latin1.json()["detail"]
    assert (big.status_code, big.json()["error"]) == (413, "body_too_large")
    assert broken_json.status_code == 422
    assert broken_json.json()["problems"][0]["message"].startswith("JSON syntax error")
    assert twice.status_code == 422
    assert "duplicate key 'dimensions'" in twice.json()["problems"][0]["message"]


# Scopes -----------------------------------------------------------------------------------
WRITES = {
    ("POST", "/v1/definitions"),
    ("POST", "/v1/definitions/previews"),
    ("GET", "/v1/definitions/previews/{preview_id}"),
    ("DELETE", "/v1/definitions/previews/{preview_id}"),
    ("POST", "/v1/definitions/{version}/rollback"),
}


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/v1/definitions")
        for method in item
    )


def _concrete(path: str) -> str:
    return (
        path.replace("{preview_id}", str(uuid.uuid4()))
        .replace("{version}", "1")
        .replace("{a}", "1")
        .replace("{b}", "1")
    )


async def test_each_route_needs_its_definitions_scope(
    api: tuple[FastAPI, httpx.AsyncClient], keys: Keys
) -> None:
    app, client = api
    routes = _routes(app)
    assert len(routes) == 9, routes
    assert set(routes) >= WRITES
    for method, path in routes:
        url = _concrete(path)
        for key, allowed in ((keys.segments, False), (keys.read, (method, path) not in WRITES)):
            r = await client.request(method, url, headers=key)
            if allowed:
                assert r.status_code != 403, (method, path, r.text)
            else:
                assert r.status_code == 403, (method, path, r.text)
                needed = "definitions:write" if (method, path) in WRITES else "definitions:read"
                assert needed in r.json()["detail"]
        r = await client.request(method, url, headers=keys.write)
        assert (r.status_code == 403) == ((method, path) not in WRITES), (method, path)


# Previews ---------------------------------------------------------------------------------
async def test_preview_jobs_are_stored_read_and_cancelled(
    engine: AsyncEngine, client: httpx.AsyncClient, keys: Keys
) -> None:
    none_in_force = await client.post("/v1/definitions/previews", json={"content": ENGAGED_10})
    assert (none_in_force.status_code, none_in_force.json()["error"]) == (409, "no_definitions")
    await seed_definitions(engine)
    r = await client.post("/v1/definitions/previews", json={"content": ENGAGED_10})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/definitions/previews/{job['id']}"
    assert job["status"] == "pending"
    assert (job["base_version"], job["samples"]) == (1, 10)
    assert job["progress"] == {"done": 0, "total": None}
    assert job["content_hash"] == load_definitions(ENGAGED_10).content_hash
    assert job["created_by"] == f"key:{keys.both_id}"
    async with unit_of_work(engine) as conn:
        row = await conn.fetchrow(
            "SELECT content, expires_at - created_at AS kept FROM definition_previews"
        )
    assert row["content"] == ENGAGED_10
    assert row["kept"].total_seconds() == 86_400
    got = await client.get(r.headers["Location"])
    assert got.status_code == 200
    assert got.json() == job

    # What the runner would write when done is passed through as it is.
    result = {
        "as_of": "2026-03-01T12:00:00Z",
        "base_version": 1,
        "customers": 2,
        "population": {"cutoffs": {"vip_spend": "120.5"}, "edges": {"r_score": [3, 9, 30, 90]}},
        "dimensions": [
            {
                "name": "engagement",
                "status": "changed",
                "segments": [{"name": "engaged", "now": 1, "candidate": 2}],
                "transitions": [
                    {
                        "from": "casual",
                        "to": "engaged",
                        "customers": 1,
                        "samples": [{"customer_id": "c-1", "reason": "x=8.0 < 10"}],
                    }
                ],
            }
        ],
    }
    async with unit_of_work(engine) as conn:
        await conn.execute(
            "UPDATE definition_previews SET status = 'done', done = 2, total = 2,"
            " result = $2::text::jsonb, finished_at = now() WHERE id = $1::uuid",
            job["id"],
            orjson.dumps(result).decode(),
        )
    done = (await client.get(r.headers["Location"])).json()
    assert done["status"] == "done"
    assert done["progress"] == {"done": 2, "total": 2}
    assert done["result"] == result
    finished = await client.delete(r.headers["Location"])
    assert (finished.status_code, finished.json()["error"]) == (409, "preview_finished")
    assert "already done" in finished.json()["detail"]

    second = await client.post(
        "/v1/definitions/previews", json={"content": ENGAGED_10, "samples": 100}
    )
    assert second.json()["samples"] == 100
    cancelled = await client.delete(second.headers["Location"])
    assert cancelled.status_code == 204
    assert cancelled.content == b""
    assert (await client.get(second.headers["Location"])).json()["status"] == "cancelled"
    assert (await client.delete(second.headers["Location"])).status_code == 409

    unknown = f"/v1/definitions/previews/{uuid.uuid4()}"
    assert (await client.get(unknown)).json()["error"] == "preview_not_found"
    assert (await client.delete(unknown)).status_code == 404
    async with unit_of_work(engine) as conn:
        await conn.execute("UPDATE definition_previews SET expires_at = now()")
    assert (await client.get(r.headers["Location"])).status_code == 404
    assert (await client.delete(second.headers["Location"])).status_code == 404

    for bad in ({"content": BROKEN}, {"content": ENGAGED_10, "samples": 0}, {"samples": 5}):
        refused = await client.post("/v1/definitions/previews", json=bad)
        assert refused.status_code == 422, bad
    assert (await client.post("/v1/definitions/previews", json={"content": BROKEN})).json()[
        "error"
    ] == "invalid_definitions"

    async def audited() -> bool:
        actions = [r["action"] for r in await audit_rows(engine)]
        return actions.count("definitions.preview.read") == 3

    await eventually(audited, within_seconds=10, message="preview reads audited")
    rows = await audit_rows(engine)
    assert {r["key_id"] for r in rows} == {keys.both_id}
    actions = [r["action"] for r in rows]
    assert actions.count("definitions.preview.create") == 2
    assert actions.count("definitions.preview.cancel") == 1
    reads = [r["detail"] for r in rows if r["action"] == "definitions.preview.read"]
    assert [(d["preview_id"], d["status"], d["sampled_customers"]) for d in reads] == [
        (job["id"], "pending", 0),
        (job["id"], "done", 1),
        (second.json()["id"], "cancelled", 0),
    ]


# Activation, versions, diff, rollback -----------------------------------------------------
async def test_activate_list_get_diff_and_roll_back(
    engine: AsyncEngine, client: httpx.AsyncClient, keys: Keys
) -> None:
    await seed_database(engine, [Customer("c-1", NOW), Customer("c-2", NOW)])
    first = await activate(client, DEFAULT, None)
    assert first.status_code == 201, first.text
    assert (first.json()["version"], first.json()["replaces"]) == (1, None)

    second = await activate(client, ENGAGED_10, 1, note="engaged is 10 days", publish="summary")
    assert second.status_code == 201, second.text
    v2 = second.json()
    assert second.headers["Location"] == "/v1/definitions/2"
    assert v2["version"] == 2
    assert v2["replaces"] == 1
    assert v2["in_force"] is True
    assert v2["changed_dimensions"] == ["engagement"]
    assert (v2["note"], v2["publish"]) == ("engaged is 10 days", "summary")
    assert v2["activated_by"] == f"key:{keys.both_id}"
    assert v2["backfill"]["total"] == 2
    assert v2["backfill"]["completed_at"] is None

    stale = await activate(client, DEFAULT, 1)
    assert (stale.status_code, stale.json()["error"]) == (409, "definitions_conflict")
    assert "version 2 is in force, not 1" in stale.json()["detail"]
    invalid = await activate(client, BROKEN, 2)
    assert (invalid.status_code, invalid.json()["detail"]) == (422, "2 problems")

    listed = (await client.get("/v1/definitions")).json()
    assert listed["in_force"] == 2
    assert [(v["version"], v["in_force"]) for v in listed["items"]] == [(2, True), (1, False)]
    assert listed["items"][0]["backfill"]["total"] == 2
    assert listed["next_cursor"] is None
    page = (await client.get("/v1/definitions", params={"limit": 1})).json()
    assert [v["version"] for v in page["items"]] == [2]
    rest = await client.get("/v1/definitions", params={"cursor": page["next_cursor"]})
    assert [v["version"] for v in rest.json()["items"]] == [1]
    assert rest.json()["next_cursor"] is None

    got = (await client.get("/v1/definitions/2")).json()
    assert got["content"] == ENGAGED_10
    assert {k: v for k, v in got.items() if k != "content"} == listed["items"][0]
    assert (await client.get("/v1/definitions/9")).json()["error"] == "version_not_found"

    diff = (await client.get("/v1/definitions/1/diff/2")).json()
    assert diff["identical"] is False
    statuses = {d["name"]: (d["status"], d["reevaluated"]) for d in diff["dimensions"]}
    assert statuses == {
        "lifecycle": ("unchanged", False),
        "value_tier": ("unchanged", False),
        "rfm": ("unchanged", False),
        "engagement": ("changed", True),
    }
    engaged = diff["dimensions"][3]["segments"][0]
    assert engaged == {
        "name": "engaged",
        "status": "changed",
        "old_condition": "days_since_last_interaction < 7",
        "new_condition": "days_since_last_interaction < 10",
        "old_description": "",
        "new_description": "",
    }
    assert diff["text"].startswith("--- version 1\n+++ version 2\n")
    assert "\n-      engaged: days_since_last_interaction < 7\n" in diff["text"]
    assert "\n+      engaged: days_since_last_interaction < 10\n" in diff["text"]
    assert (await client.get("/v1/definitions/2/diff/2")).json()["identical"] is True
    assert (await client.get("/v1/definitions/1/diff/9")).status_code == 404

    rolled = await client.post("/v1/definitions/1/rollback", json={"replaces": 2})
    assert rolled.status_code == 201, rolled.text
    v3 = rolled.json()
    assert (v3["version"], v3["replaces"], v3["note"]) == (3, 2, "rollback to version 1")
    assert v3["content_hash"] == first.json()["content_hash"]
    assert v3["changed_dimensions"] == ["engagement"]
    assert (await client.get("/v1/definitions/3")).json()["content"] == DEFAULT
    segments = await client.get("/v1/segments", headers=keys.segments)
    assert segments.json()["version"] == 3
    assert segments.json()["content_hash"] == v3["content_hash"]
    # The backfill of version 2, unfinished, is taken over by version 3's.
    assert (await client.get("/v1/definitions/2")).json()["backfill"]["superseded_by"] == 3

    again = await client.post("/v1/definitions/1/rollback", json={"replaces": 2})
    assert (again.status_code, again.json()["error"]) == (409, "definitions_conflict")
    assert (
        await client.post("/v1/definitions/7/rollback", json={"replaces": 3})
    ).status_code == 404

    rows = [r for r in await audit_rows(engine) if r["action"].startswith("definitions.")]
    assert [r["action"] for r in rows] == [
        "definitions.activate",
        "definitions.activate",
        "definitions.rollback",
    ]
    assert {(r["actor"], r["key_id"]) for r in rows} == {(f"key:{keys.both_id}", keys.both_id)}
    assert rows[1]["detail"] == {
        "version": 2,
        "replaces": 1,
        "content_hash": v2["content_hash"],
        "changed_dimensions": ["engagement"],
        "publish": "summary",
        "note": "engaged is 10 days",
    }
    assert rows[2]["detail"]["rollback_to"] == 1


async def test_concurrent_activations_of_one_version_commit_once(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    version = await seed_definitions(engine)
    candidates = [
        ENGAGED_10,
        DEFAULT.replace(
            "casual:  days_since_last_interaction >= 7 and days_since_last_interaction < 30",
            "casual:  days_since_last_interaction >= 7 and days_since_last_interaction < 40",
        ).replace(
            "dormant: days_since_last_interaction >= 30",
            "dormant: days_since_last_interaction >= 40",
        ),
    ]
    for _ in range(3):
        answers = await asyncio.gather(*(activate(client, c, version) for c in candidates))
        codes = sorted(a.status_code for a in answers)
        assert codes == [201, 409], [a.text for a in answers]
        winner = next(a for a in answers if a.status_code == 201).json()["version"]
        loser = next(a for a in answers if a.status_code == 409).json()
        assert loser["error"] == "definitions_conflict"
        assert f"version {winner} is in force, not {version}" in loser["detail"]
        version = winner
    listed = (await client.get("/v1/definitions")).json()
    assert [v["version"] for v in listed["items"]] == [4, 3, 2, 1]
    assert [v["replaces"] for v in listed["items"]] == [3, 2, 1, None]


async def test_an_activation_waits_for_commits_under_the_version_in_force(
    settings: ConnectionSettings, engine: AsyncEngine, keys: Keys
) -> None:
    await seed_definitions(engine)
    hold = asyncio.Event()

    async def segmenter_commit(seconds: float) -> None:
        # As an evaluation's commit: the version in force read FOR SHARE, held a while.
        async with unit_of_work(engine) as conn:
            await conn.execute("SELECT version FROM definitions_in_force FOR SHARE")
            hold.set()
            await asyncio.sleep(seconds)

    async with running_api(settings, database_timeout_ms=300, activation_timeout_ms=5000) as (
        _,
        client,
    ):
        client.headers.update(keys.both)
        holder = asyncio.create_task(segmenter_commit(1.0))
        await hold.wait()
        waited = await activate(client, ENGAGED_10, 1)
        await holder
        assert waited.status_code == 201, waited.text
        # The pooled connection's own statement_timeout was only lifted for that transaction.
        assert (await client.get("/v1/definitions")).status_code == 200
    hold.clear()
    async with running_api(settings, activation_timeout_ms=300) as (_, client):
        client.headers.update(keys.both)
        holder = asyncio.create_task(segmenter_commit(1.5))
        await hold.wait()
        timed_out = await activate(client, DEFAULT, 2)
        await holder
    assert (timed_out.status_code, timed_out.json()["error"]) == (503, "database_unavailable")
    async with unit_of_work(engine) as conn:
        assert await conn.fetchval("SELECT version FROM definitions_in_force") == 2


async def test_a_unit_of_work_commits_all_or_nothing(
    api: tuple[FastAPI, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    # Statements go to the driver under the unit of work: it must be their transaction.
    db = api[0].state.resources.db

    async def insert_then_fail() -> None:
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO audit_log (at, actor, action) VALUES (now(), 'test', 'x')"
            )
            raise LookupError

    with pytest.raises(LookupError):
        await insert_then_fail()
    assert await audit_rows(engine, "x") == []


# The CLI against a live API process -------------------------------------------------------
async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "definitions",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_drives_the_whole_cycle_through_the_api(
    engine: AsyncEngine, service_env: dict[str, str], tmp_path: Path
) -> None:
    await seed_definitions(engine)
    key = await make_key(engine, "definitions:read", "definitions:write", name="analyst")
    reader = await make_key(engine, "segments:read")
    engaged, broken = tmp_path / "engaged.yaml", tmp_path / "broken.yaml"
    engaged.write_text(ENGAGED_10)
    broken.write_text(BROKEN)
    async with api_process(service_env) as api:
        env = service_env | {"STREAMSEG_API_URL": api.url, "STREAMSEG_API_KEY": key}

        code, out, err = await run_cli(env, "validate", str(broken))
        assert code == 1, out + err
        assert err.splitlines()[0] == "error: invalid_definitions (HTTP 422): 2 problems"
        assert err.splitlines()[1].startswith("value_tier/vip: ")
        assert err.splitlines()[2].startswith("engagement/engaged: ")
        code, out, err = await run_cli(env, "validate", str(engaged))
        assert code == 0, err
        assert "changed dimensions (against version 1): engagement" in out

        preview = asyncio.create_task(
            run_cli(
                env, "preview", str(engaged), "--samples", "3", "--wait", "--poll-seconds", "0.1"
            )
        )

        async def stored() -> bool:
            async with unit_of_work(engine) as conn:
                return bool(await conn.fetchval("SELECT count(*) FROM definition_previews"))

        await eventually(stored, within_seconds=30, message="preview stored")
        result = {
            "as_of": "2026-03-01T12:00:00Z",
            "base_version": 1,
            "customers": 40,
            "population": {"cutoffs": {}, "edges": {}},
            "dimensions": [
                {
                    "name": "engagement",
                    "status": "changed",
                    "segments": [
                        {"name": "engaged", "now": 10, "candidate": 14},
                        {"name": "casual", "now": 30, "candidate": 26},
                    ],
                    "transitions": [
                        {
                            "from": "casual",
                            "to": "engaged",
                            "customers": 4,
                            "samples": [{"customer_id": "c-9", "reason": "x=8.0 < 10"}],
                        }
                    ],
                }
            ],
        }
        async with unit_of_work(engine) as conn:
            await conn.execute(
                "UPDATE definition_previews SET status = 'done', done = 40, total = 40,"
                " result = $1::text::jsonb, finished_at = now()",
                orjson.dumps(result).decode(),
            )
        code, out, err = await preview
        assert code == 0, err
        assert "pending" in err
        assert "done, 40/40 customers" in err
        assert "engaged   10         14      +4" in out
        assert "  casual -> engaged: 4 customers\n    c-9: x=8.0 < 10" in out

        code, out, err = await run_cli(env, "activate", str(engaged), "--note", "ten days")
        assert code == 0, err
        assert "replacing version 1, the version in force" in err
        assert out.startswith("activated version 2\nversion 2 (in force)\n")
        assert "note: ten days" in out

        code, out, _ = await run_cli(env, "list")
        assert code == 0
        rows = out.splitlines()
        assert rows[1].split()[:2] == ["2", "*"]
        assert rows[2].split()[0] == "1"
        code, out, _ = await run_cli(env, "show", "2")
        assert code == 0
        assert out.endswith(ENGAGED_10)
        code, out, _ = await run_cli(env, "diff", "1", "2")
        assert code == 0
        assert "  segment engaged: changed\n    - days_since_last_interaction < 7\n" in out
        assert "--- version 1\n+++ version 2\n" in out

        code, out, err = await run_cli(env, "rollback", "1")
        assert code == 0, err
        assert "replacing version 2" in err
        assert out.startswith("activated version 3 (the content of version 1)\n")
        code, _, err = await run_cli(env, "rollback", "1", "--replaces", "2")
        assert code == 1
        assert "error: definitions_conflict (HTTP 409): version 3 is in force, not 2" in err

        code, _, err = await run_cli(env | {"STREAMSEG_API_KEY": reader}, "list")
        assert code == 1
        assert "insufficient_scope" in err
    actions = [r["action"] for r in await audit_rows(engine) if r["action"].startswith("defin")]
    assert "definitions.activate" in actions
    assert "definitions.rollback" in actions


async def test_admins_create_keys_with_the_definitions_scopes(
    engine: AsyncEngine, api: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    admin = bearer(await make_key(engine, "admin"))
    every = ["admin", "definitions:read", "definitions:write", "segments:read"]
    created = await api[1].post(
        "/v1/admin/keys", json={"name": "all", "scopes": every}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["scopes"] == every
    analyst = bearer(created.json()["key"])
    assert (await api[1].get("/v1/definitions", headers=analyst)).status_code == 200
