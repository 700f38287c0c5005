"""Definitions in force with segment sizes, segment members by cursor, transition counts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter.repository import save_population_stats
from shared.segmentation import PopulationStats, default_definitions
from shared.settings import ConnectionSettings
from tests.integration.test_api_support import (
    DEFAULT_SEGMENTS,
    Change,
    Customer,
    bearer,
    make_key,
    running_api,
    seed_database,
    seed_definitions,
    seed_history,
    unit_of_work,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def client(
    settings: ConnectionSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    key = await make_key(engine, "segments:read")
    async with running_api(settings) as (_, http):
        http.headers.update(bearer(key))
        yield http


async def test_definitions_in_force_with_sizes(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/v1/segments")).json()["error"] == "no_definitions"
    version = await seed_definitions(engine)
    vips = [Customer(f"v{i}", NOW, segments={"value_tier": "vip"}) for i in range(3)]
    await seed_database(engine, [*vips, Customer("a", NOW), Customer("b", NOW)])

    r = await client.get("/v1/segments")

    assert r.status_code == 200, r.text
    body = r.json()
    expected = default_definitions()
    assert body["version"] == version
    assert body["content_hash"] == expected.content_hash
    assert [d["name"] for d in body["dimensions"]] == [d.name for d in expected.dimensions]
    sizes = {(d["name"], s["name"]): s["size"] for d in body["dimensions"] for s in d["segments"]}
    assert sizes[("value_tier", "vip")] == 3
    assert sizes[("value_tier", DEFAULT_SEGMENTS["value_tier"])] == 2
    assert sizes[("lifecycle", "active")] == 2
    assert sizes[("lifecycle", "churned")] == 0
    assert sum(sizes.values()) == 3 + 2 * len(DEFAULT_SEGMENTS)
    lifecycle = body["dimensions"][0]["segments"]
    assert lifecycle[0] == {
        "name": "prospect",
        "description": "No order yet (interactions or not).",
        "condition": "not has_ordered",
        "resolved_condition": "not has_ordered",
        "size": 0,
    }


async def test_cutoffs_and_edges_unresolved_before_population_stats(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    version = await seed_definitions(engine)

    body = (await client.get("/v1/segments")).json()

    assert body["activated_by"] == "test"
    assert body["note"] == "seeded at start"
    assert body["loaded_at"] == body["activated_at"]
    assert (body["population_computed_at"], body["population_customers"]) == (None, None)
    assert body["cutoffs"][0] == {
        "name": "vip_spend",
        "metric": "spend_365d",
        "top_percent": "5",
        "value": None,
        "resolved_value": None,
        "resolved": "spend_365d >= vip_spend (unresolved)",
    }
    assert [s["edges"] for s in body["scores"]] == [None, None, None]
    assert _resolved(body)[("value_tier", "high")] == (
        "spend_365d >= high_spend (unresolved) and spend_365d < vip_spend (unresolved)"
    )
    assert body["version"] == version


async def test_cutoffs_and_edges_resolved_by_the_stats_of_the_version_in_force(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    version = await seed_definitions(engine)
    stats = PopulationStats(
        cutoffs={
            "vip_spend": Decimal("428.2800"),
            "high_spend": Decimal("120.5000"),
            "medium_spend": Decimal("40"),
        },
        edges={"r_score": (3.5, 10.0, 30.25, 90.0), "f_score": (1, 1, 2, 4)},
    )
    computed = datetime.now(UTC).replace(microsecond=0)
    async with unit_of_work(engine) as conn:
        await save_population_stats(conn, version, computed, 1234, stats.to_dict())
        # A version stored but never put in force, with stats of its own: neither is shown.
        await conn.execute(
            "INSERT INTO segment_definitions (version, content_hash) SELECT $1 + 1, content_hash"
            " FROM segment_definitions WHERE version = $1",
            version,
        )
        await save_population_stats(conn, version + 1, computed, 9, PopulationStats().to_dict())

    body = (await client.get("/v1/segments")).json()

    assert body["version"] == version
    assert datetime.fromisoformat(body["population_computed_at"]) == computed
    assert body["population_customers"] == 1234
    assert [(c["name"], c["resolved_value"], c["resolved"]) for c in body["cutoffs"]] == [
        ("vip_spend", "428.28", "spend_365d >= 428.28"),
        ("high_spend", "120.5", "spend_365d >= 120.5"),
        ("medium_spend", "40", "spend_365d >= 40"),
    ]
    assert body["scores"] == [
        {
            "name": "r_score",
            "metric": "days_since_last_order",
            "buckets": 5,
            "better": "lower",
            "edges": ["3.5", "10", "30.25", "90"],
        },
        {
            "name": "f_score",
            "metric": "orders_365d",
            "buckets": 5,
            "better": "higher",
            "edges": ["1", "1", "2", "4"],
        },
        # No customer had a value for it: unresolved.
        {
            "name": "m_score",
            "metric": "spend_365d",
            "buckets": 5,
            "better": "higher",
            "edges": None,
        },
    ]
    resolved = _resolved(body)
    assert resolved[("value_tier", "vip")] == "spend_365d >= 428.28"
    assert resolved[("value_tier", "high")] == "spend_365d >= 120.5 and spend_365d < 428.28"
    assert resolved[("rfm", "loyal")] == "r_score in [3, 4] and f_score >= 4"


def _resolved(body: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (d["name"], s["name"]): s["resolved_condition"]
        for d in body["dimensions"]
        for s in d["segments"]
    }


async def test_members_page_in_customer_id_order(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    await seed_definitions(engine)
    ids = ["m-3", "m-1", "m-5", "m-2", "m-4"]
    await seed_database(
        engine,
        [Customer(i, NOW, segments={"engagement": "dormant"}) for i in ids]
        + [Customer("other", NOW, segments={"engagement": "engaged"})],
    )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/segments/engagement/dormant/members", params=params)
        assert r.status_code == 200, r.text
        seen += [m["customer_id"] for m in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)


async def test_members_of_unknown_dimension_or_segment_are_404(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    await seed_definitions(engine)
    dim = await client.get("/v1/segments/nope/vip/members")
    seg = await client.get("/v1/segments/value_tier/nope/members")
    assert (dim.status_code, dim.json()["error"]) == (404, "dimension_not_found")
    assert (seg.status_code, seg.json()["error"]) == (404, "segment_not_found")
    bad = await client.get("/v1/segments/value_tier/vip/members", params={"cursor": "!!"})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_cursor")


async def test_transition_counts_over_a_period(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    start = NOW - timedelta(days=1)
    inside = [
        Change("a", "lifecycle", "active", "at_risk", start),
        Change("b", "lifecycle", "active", "at_risk", start + timedelta(hours=1)),
        Change("c", "lifecycle", None, "prospect", start + timedelta(hours=2)),
        Change("a", "value_tier", "high", "vip", start + timedelta(hours=3)),
    ]
    outside = [
        Change("d", "lifecycle", "active", "at_risk", start - timedelta(seconds=1)),
        Change("e", "lifecycle", "active", "at_risk", start + timedelta(hours=6)),
    ]
    await seed_history(engine, inside + outside)
    until = start + timedelta(hours=6)

    r = await client.get(
        "/v1/stats/transitions", params={"since": start.isoformat(), "until": until.isoformat()}
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 4
    assert [
        (t["dimension"], t["from_segment"], t["to_segment"], t["count"])
        for t in body["transitions"]
    ] == [
        ("lifecycle", "active", "at_risk", 2),
        ("lifecycle", None, "prospect", 1),
        ("value_tier", "high", "vip", 1),
    ]
    only = await client.get(
        "/v1/stats/transitions",
        params={"since": start.isoformat(), "until": until.isoformat(), "dimension": "value_tier"},
    )
    assert only.json()["total"] == 1
    to_now = await client.get("/v1/stats/transitions", params={"since": start.isoformat()})
    assert to_now.json()["total"] == 5


async def test_transition_counts_only_of_dimensions_in_force(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    await seed_definitions(engine)
    start = NOW - timedelta(hours=1)
    await seed_history(
        engine,
        [
            Change("a", "loyalty", None, "gold", start),  # a dimension no longer in force
            Change("a", "loyalty", "gold", None, start),  # and its exit
            # An exit from a dimension removed once and now back in force.
            Change("b", "engagement", "engaged", None, start),
        ],
    )

    r = await client.get("/v1/stats/transitions", params={"since": start.isoformat()})

    assert r.status_code == 200, r.text
    assert [(t["dimension"], t["to_segment"]) for t in r.json()["transitions"]] == [
        ("engagement", None)
    ]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "validation_error"),
        ({"since": "2026-01-01T00:00:00"}, "validation_error"),
        ({"since": "yesterday"}, "validation_error"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "invalid_period"),
        ({"since": "0001-01-01T00:00:00Z"}, "invalid_period"),
    ],
)
async def test_transitions_need_a_timezone_aware_period(
    client: httpx.AsyncClient, params: dict[str, str], error: str
) -> None:
    r = await client.get("/v1/stats/transitions", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == error
