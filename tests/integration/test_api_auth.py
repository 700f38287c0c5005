"""API keys and the audit trail: 401 and 403, revocation, the key CLI, the admin endpoints,
and audit entries for reads of personal data."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually
from tests.integration.test_api_support import (
    Customer,
    audit_rows,
    bearer,
    make_key,
    running_api,
    seed_database,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SEGMENTS = "/v1/customers/c-1/segments"


async def test_missing_unknown_and_malformed_keys_are_401_with_a_challenge(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    real = await make_key(engine, "segments:read")
    forged = real[:-4] + ("aaaa" if not real.endswith("aaaa") else "bbbb")
    async with running_api(settings) as (_, client):
        missing = await client.get(SEGMENTS)
        wrong = await client.get(SEGMENTS, headers=bearer(forged))
        malformed = await client.get(SEGMENTS, headers={"X-API-Key": "hunter2"})
        basic = await client.get(SEGMENTS, headers={"Authorization": "Basic dTpw"})
    assert missing.json()["error"] == "unauthorized"
    assert wrong.json()["error"] == "invalid_api_key"
    assert malformed.json()["error"] == "invalid_api_key"
    for r in (missing, wrong, malformed, basic):
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="streamseg"')


async def test_either_header_carries_the_key(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    await seed_database(engine, [Customer("c-1", NOW)])
    key = await make_key(engine, "segments:read")
    async with running_api(settings) as (_, client):
        assert (await client.get(SEGMENTS, headers=bearer(key))).status_code == 200
        assert (await client.get(SEGMENTS, headers={"X-API-Key": key})).status_code == 200


async def test_a_key_without_the_scope_is_403(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    admin_only = await make_key(engine, "admin")
    reader = await make_key(engine, "segments:read")
    async with running_api(settings) as (_, client):
        read = await client.get(SEGMENTS, headers=bearer(admin_only))
        manage = await client.get("/v1/admin/keys", headers=bearer(reader))
    for r in (read, manage):
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "insufficient_scope"
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


async def cli(service_env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.api.keys",
        *args,
        cwd=ROOT,
        env=service_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_creates_lists_and_revokes_keys(
    settings: ConnectionSettings, engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    await seed_database(engine, [Customer("c-1", NOW)])
    code, out = await cli(
        service_env, "create", "--name", "shop", "--scope", "segments:read", "--scope", "admin"
    )
    assert code == 0, out
    key = re.search(r"^key:\s+(ssk_\S+)$", out, re.M)
    key_id = re.search(r"^id:\s+([0-9a-f]{12})$", out, re.M)
    assert key is not None, out
    assert key_id is not None, out

    code, listing = await cli(service_env, "list")
    assert code == 0
    assert key_id.group(1) in listing
    assert "admin,segments:read" in listing
    assert key.group(1) not in listing

    async with running_api(settings, auth_cache_seconds=0) as (_, client):
        assert (await client.get(SEGMENTS, headers=bearer(key.group(1)))).status_code == 200
        code, out = await cli(service_env, "revoke", key_id.group(1))
        assert code == 0, out
        r = await client.get(SEGMENTS, headers=bearer(key.group(1)))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_api_key"

    code, out = await cli(service_env, "revoke", "000000000000")
    assert code == 1
    assert "no API key" in out
    code, out = await cli(service_env, "create", "--name", "x", "--scope", "root")
    assert code != 0
    actions = [(r["action"], r["actor"].startswith("cli")) for r in await audit_rows(engine)]
    assert ("key.create", True) in actions
    assert ("key.revoke", True) in actions


async def test_admin_endpoints_manage_keys_and_audit_themselves(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    admin = bearer(await make_key(engine, "admin", name="ops"))
    async with running_api(settings, auth_cache_seconds=3600) as (_, client):
        created = await client.post(
            "/v1/admin/keys", json={"name": "shop", "scopes": ["segments:read"]}, headers=admin
        )
        assert created.status_code == 201, created.text
        new = created.json()
        assert new["key"].startswith(f"ssk_{new['id']}_")
        assert (await client.get("/v1/segments", headers=bearer(new["key"]))).status_code == 404

        listed = await client.get("/v1/admin/keys", headers=admin)
        assert {k["name"] for k in listed.json()["keys"]} == {"ops", "shop"}
        assert "key" not in listed.json()["keys"][0]

        revoked = await client.delete(f"/v1/admin/keys/{new['id']}", headers=admin)
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        # Revoked here, so refused at once despite the hour-long cache.
        refused = await client.get("/v1/segments", headers=bearer(new["key"]))
        assert refused.status_code == 401
        missing = await client.delete("/v1/admin/keys/0123456789ab", headers=admin)
        assert missing.status_code == 404
    actions = [r["action"] for r in await audit_rows(engine)]
    assert actions == ["key.create", "key.revoke"]


async def test_customer_reads_are_audited_off_the_request_path(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    await seed_database(engine, [Customer("c-1", NOW), Customer("c-2", NOW)])
    key = await make_key(engine, "segments:read")
    key_id = key.split("_")[1]
    admin = bearer(await make_key(engine, "admin"))
    async with running_api(settings, audit_flush_interval_ms=50) as (_, client):
        await client.get(SEGMENTS, headers=bearer(key))
        await client.post(
            "/v1/customers/segments:batch",
            json={"customer_ids": ["c-2", "nobody"]},
            headers=bearer(key),
        )

        async def written() -> bool:
            return len(await audit_rows(engine, "customer.segments.read")) == 2

        await eventually(written, within_seconds=10, message="audit entries written")
        page = await client.get("/v1/admin/audit", params={"customer_id": "c-2"}, headers=admin)
    rows = await audit_rows(engine, "customer.segments.read")
    assert [(r["customer_id"], r["key_id"], r["actor"]) for r in rows] == [
        ("c-1", key_id, f"key:{key_id}"),
        ("c-2", key_id, f"key:{key_id}"),
    ]
    assert [i["customer_id"] for i in page.json()["items"]] == ["c-2"]


async def test_buffered_audit_entries_are_written_at_shutdown(
    settings: ConnectionSettings, engine: AsyncEngine
) -> None:
    await seed_database(engine, [Customer("c-1", NOW)])
    key = await make_key(engine, "segments:read")
    async with running_api(settings, audit_flush_interval_ms=3_600_000) as (_, client):
        assert (await client.get(SEGMENTS, headers=bearer(key))).status_code == 200
        assert await audit_rows(engine) == []
    assert [r["customer_id"] for r in await audit_rows(engine)] == ["c-1"]


async def test_audit_log_pages_by_cursor(settings: ConnectionSettings, engine: AsyncEngine) -> None:
    admin = bearer(await make_key(engine, "admin"))
    async with running_api(settings) as (_, client):
        for i in range(3):
            await client.post(
                "/v1/admin/keys", json={"name": f"k{i}", "scopes": ["admin"]}, headers=admin
            )
        first = await client.get("/v1/admin/audit", params={"limit": 2}, headers=admin)
        cursor = first.json()["next_cursor"]
        second = await client.get(
            "/v1/admin/audit", params={"limit": 2, "cursor": cursor}, headers=admin
        )
    names = [i["detail"]["name"] for i in first.json()["items"] + second.json()["items"]]
    assert names == ["k2", "k1", "k0"]
    assert second.json()["next_cursor"] is None
