"""PUT, PATCH and GET /v1/customers/{id}/traits: through real Kafka and ingest into
customer_traits, the customer queued; scopes, 422 naming the field, 503 without Kafka."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from services.api.auth.keys import SCOPES
from shared.settings import ConnectionSettings
from tests.conftest import MakeTopic, eventually, free_port, unique
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.support.ingest import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(settings: ConnectionSettings, harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """The API producing to the harness's customers topic, which its ingest worker reads."""
    async with running_api(settings, customers_topic=harness.topics.customers) as (app, client):
        assert app.state.resources.kafka.is_connected
        yield client


async def stored(harness: Harness, customer_id: str) -> dict[str, Any] | None:
    async with harness.engine.connect() as conn:
        value = (
            await conn.execute(
                text("SELECT traits::text FROM customer_traits WHERE customer_id = :c"),
                {"c": customer_id},
            )
        ).scalar_one_or_none()
    return None if value is None else dict(json.loads(value))


async def applied(harness: Harness, customer_id: str, expected: dict[str, Any]) -> None:
    async def holds() -> bool:
        return await stored(harness, customer_id) == expected

    await eventually(holds, within_seconds=30, message=f"traits of {customer_id} = {expected}")


async def test_put_and_patch_reach_customer_traits_through_kafka_and_ingest(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    harness.worker()
    writer = bearer(await make_key(harness.engine, "traits:write"))
    reader = bearer(await make_key(harness.engine, "segments:read"))

    put = await api.put(
        "/v1/customers/c-7/traits",
        headers=writer,
        json={
            "traits": {
                "country": "DE",
                "city": "Berlin",
                "interests": ["running", "yoga"],
                "custom": {"loyalty_tier": "gold", "children": 2},
            }
        },
    )
    assert put.status_code == 202, put.text
    assert put.headers["location"] == "/v1/customers/c-7/traits"
    accepted = put.json()
    assert accepted["customer_id"] == "c-7"
    assert accepted["event_id"].startswith("api:")
    await applied(
        harness,
        "c-7",
        {
            "country": "DE",
            "city": "Berlin",
            "interests": ["running", "yoga"],
            "loyalty_tier": "gold",
            "children": 2,
        },
    )

    patch = await api.patch(
        "/v1/customers/c-7/traits",
        headers=writer,
        json={"traits": {"city": "Hamburg"}, "unset": ["loyalty_tier"], "event_id": "crm-1"},
    )
    assert patch.status_code == 202, patch.text
    assert patch.json()["event_id"] == "crm-1"
    expected = {"country": "DE", "city": "Hamburg", "interests": ["running", "yoga"], "children": 2}
    await applied(harness, "c-7", expected)

    got = await api.get("/v1/customers/c-7/traits", headers=reader)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["traits"] == {
        "country": "DE",
        "city": "Hamburg",
        "interests": ["running", "yoga"],
        "custom": {"children": 2},
    }
    assert body["set_by"]["city"]["event_id"] == "crm-1"
    assert body["set_by"]["country"]["event_id"] == accepted["event_id"]
    assert body["version"] == 2

    # An older change, sent late with its own time: the PUT replaced every trait after it,
    # so it changes nothing, not even postal_code, which the PUT cleared as of its time.
    late = await api.patch(
        "/v1/customers/c-7/traits",
        headers=writer,
        json={
            "traits": {"city": "Köln", "postal_code": "50667"},
            "occurred_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "event_id": "crm-late",
        },
    )
    assert late.status_code == 202, late.text

    async def ingested() -> bool:
        async with harness.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT 1 FROM processed_events WHERE event_id = 'crm-late'")
            )
            return found.first() is not None

    await eventually(ingested, message="the late event ingested")
    assert await stored(harness, "c-7") == expected

    replaced = await api.put("/v1/customers/c-7/traits", headers=writer, json={"traits": {}})
    assert replaced.status_code == 202, replaced.text
    await applied(harness, "c-7", {})
    assert (await api.get("/v1/customers/c-7/traits", headers=reader)).json()["traits"] == {
        "custom": {}
    }

    async with harness.engine.connect() as conn:
        queued = (
            await conn.execute(
                text("SELECT cause FROM segmentation_queue WHERE customer_id = 'c-7'")
            )
        ).scalar_one()
    assert queued == "event"

    async def audited() -> bool:
        async with harness.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT action, detail::text FROM audit_log WHERE customer_id = 'c-7'"
                    " ORDER BY id"
                )
            )
            entries = [(r.action, json.loads(r.detail) if r.detail else None) for r in rows]
        return [a for a, _ in entries] == [
            "customer.traits.replace",
            "customer.traits.update",
            "customer.traits.read",
            "customer.traits.update",
            "customer.traits.replace",
            "customer.traits.read",
        ] and entries[1][1] == {"event_id": "crm-1", "set": ["city"], "unset": ["loyalty_tier"]}

    await eventually(audited, message="writes and reads audited, with names but no values")


async def test_scopes(harness: Harness, api: httpx.AsyncClient) -> None:
    reader = bearer(await make_key(harness.engine, "segments:read", "definitions:write"))
    writer = bearer(await make_key(harness.engine, "traits:write"))
    body = {"traits": {"country": "DE"}}

    for method in ("PUT", "PATCH"):
        r = await api.request(method, "/v1/customers/c-1/traits", headers=reader, json=body)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "insufficient_scope"
        assert "traits:write" in r.json()["detail"]
        anonymous = await api.request(method, "/v1/customers/c-1/traits", json=body)
        assert anonymous.status_code == 401
    read = await api.get("/v1/customers/c-1/traits", headers=writer)
    assert read.status_code == 403, read.text
    assert (await api.get("/v1/customers/c-1/traits", headers=reader)).status_code == 404


BAD_BODIES: list[tuple[str, str, Any, str, str]] = [
    ("PUT", "country", {"traits": {"country": "UK"}}, "body.traits.country", "ISO 3166-1"),
    ("PATCH", "misspelt", {"traits": {"coutnry": "DE"}}, "body.traits", "unknown field"),
    ("PATCH", "unset-set", {"traits": {"city": "x"}, "unset": ["city"]}, "body.unset.0", "also"),
    ("PATCH", "nothing", {}, "body.traits", "changes nothing"),
    ("PUT", "no-traits", {"unset": []}, "body", "unknown field `unset`"),
    ("PUT", "missing", {}, "body.traits", "required"),
    ("PATCH", "replace-flag", {"replace": True}, "body", "unknown field `replace`"),
    ("PATCH", "custom", {"traits": {"custom": {"city": "x"}}}, "body.traits.custom", "built-in"),
    ("PATCH", "interest", {"traits": {"interests": ["a", 1]}}, "body.traits.interests.1", "str"),
    ("PATCH", "event-id", {"traits": {"city": "x"}, "event_id": "a b"}, "body.event_id", "match"),
    (
        "PATCH",
        "future",
        {"traits": {"city": "x"}, "occurred_at": "2999-01-01T00:00:00Z"},
        "body.occurred_at",
        "outside",
    ),
    ("PATCH", "naive", {"traits": {"city": "x"}, "occurred_at": "2026-01-01T00:00:00"}, "", ""),
    ("PATCH", "not-json", "{not json", "body", "JSON"),
]


async def test_bad_bodies_are_422_naming_the_field_and_nothing_is_produced(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    writer = bearer(await make_key(harness.engine, "traits:write"))
    for method, name, doc, location, words in BAD_BODIES:
        content = doc if isinstance(doc, str) else json.dumps(doc)
        r = await api.request(
            method,
            "/v1/customers/c-1/traits",
            headers=writer | {"content-type": "application/json"},
            content=content,
        )
        assert r.status_code == 422, (name, r.text)
        body = r.json()
        assert body["error"] == "validation_error", name
        if location:
            assert body["problems"][0]["location"] == location, (name, body)
            assert words in body["problems"][0]["message"], (name, body)
    bad_path = await api.put("/v1/customers/a%20b/traits", headers=writer, json={"traits": {}})
    assert bad_path.status_code == 422
    # Under the API's body limit, over the record limit once it is an event.
    custom: dict[str, Any] = {"a": ["x" * 256] * 100, "b": ["x" * 256] * 100}
    for i in range(13):
        custom[f"s{i}"] = "x" * 1024
    body = {"traits": {"custom": custom}}
    compact = len(json.dumps(body, separators=(",", ":")))
    custom["pad"] = "x" * (65_500 - compact - len(',"pad":""'))
    huge = json.dumps(body, separators=(",", ":"))
    assert len(huge) <= 65_536
    too_big = await api.patch("/v1/customers/c-1/traits", headers=writer, content=huge)
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"] == "body_too_large"

    consumer = AIOKafkaConsumer(bootstrap_servers=harness.bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(harness.topics.customers, p) for p in range(4)]
        assert set((await consumer.end_offsets(parts)).values()) == {0}
    finally:
        await consumer.stop()


async def test_without_kafka_writes_are_503_and_reads_still_answer(
    settings: ConnectionSettings, make_topic: MakeTopic, engine: Any
) -> None:
    writer = bearer(await make_key(engine, "traits:write"))
    reader = bearer(await make_key(engine, "segments:read"))
    unreachable = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with running_api(unreachable) as (app, client):
        assert not app.state.resources.kafka.is_connected
        r = await client.patch(
            "/v1/customers/c-1/traits", headers=writer, json={"traits": {"city": "x"}}
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "kafka_unavailable"
        assert "not accepted" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        assert (await client.get("/v1/customers/c-1/traits", headers=reader)).status_code == 404

    # Kafka is there, the topic is not: answered within the produce time-out, saying so.
    async with running_api(
        settings, customers_topic=unique("missing"), traits_produce_timeout_ms=500
    ) as (_, client):
        r = await client.put("/v1/customers/c-1/traits", headers=writer, json={"traits": {}})
        assert r.status_code == 503, r.text
        assert "does not exist" in r.json()["detail"]


async def test_a_key_may_hold_every_scope_the_api_knows(engine: Any) -> None:
    assert "traits:write" in SCOPES
    await make_key(engine, *SCOPES)  # the api_keys check (migration 0007) admits them all
