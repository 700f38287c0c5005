"""The change stream over real HTTP (uvicorn): resume by Last-Event-ID or `after`, live
changes, the dimension filter, a server stop that does not wait for open streams, and a
revoked key that ends its stream."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.auth.keys import key_id_of
from shared.events.segment_change import decode_segment_change
from tests.conftest import eventually
from tests.integration.test_api_support import (
    Change,
    api_process,
    audit_rows,
    bearer,
    make_key,
    seed_history,
)
from tests.support.segmenter import scalar

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
FAST = {"STREAMSEG_API_STREAM_POLL_INTERVAL_MS": "50"}


class Event(NamedTuple):
    id: int
    event: str
    data: str


class EventReader:
    """Reads a stream's events; comments and retry lines are skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, count: int, within: float = 10) -> list[Event]:
        events: list[Event] = []
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            async for line in self._lines:
                if not line:
                    if "data" in fields:
                        events.append(Event(int(fields["id"]), fields["event"], fields["data"]))
                        if len(events) == count:
                            return events
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
        raise AssertionError(f"stream ended after {len(events)} of {count} events")

    async def rest(self) -> list[str]:
        return [line async for line in self._lines]


def changes(n: int, customer: str = "c-1", dimension: str = "lifecycle") -> list[Change]:
    return [
        Change(customer, dimension, f"s{i}", f"s{i + 1}", NOW + timedelta(seconds=i), sequence=i)
        for i in range(n)
    ]


async def test_stream_resumes_after_last_event_id_then_follows_new_changes(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    ids = await seed_history(engine, changes(5))
    headers = bearer(await make_key(engine, "segments:read"))
    async with (
        api_process(service_env, FAST) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
    ):
        resume = {**headers, "Last-Event-ID": str(ids[1])}
        # `after` is what the first connection asked for; Last-Event-ID wins on reconnect.
        async with client.stream(
            "GET", "/v1/changes/stream", params={"after": 0}, headers=resume
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            reader = EventReader(r)
            backlog = await reader.next(3)
            later = await seed_history(engine, changes(1, customer="c-2"))
            (live,) = await reader.next(1)

    assert [e.id for e in backlog] == ids[2:]
    assert live.id == later[0]
    event = decode_segment_change(backlog[0].data.encode())
    assert backlog[0].event == "segment.changed"
    # The id recorded with the change, the one Kafka carries, not one derived again.
    assert event.id == str(
        await scalar(engine, "SELECT change_id FROM segment_history WHERE id = :id", id=ids[2])
    )
    assert (event.data.from_segment, event.data.to_segment) == ("s2", "s3")
    assert event.data.evaluated_at == NOW + timedelta(seconds=2)
    assert decode_segment_change(live.data.encode()).subject == "c-2"


async def test_stream_filters_by_dimension_and_starts_at_now_by_default(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    old = await seed_history(engine, changes(2))
    headers = bearer(await make_key(engine, "segments:read"))
    async with (
        api_process(service_env, FAST) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
    ):
        async with client.stream(
            "GET", "/v1/changes/stream", params={"dimension": "rfm"}, headers=headers
        ) as r:
            await asyncio.sleep(0.3)  # the stream has taken its starting point
            new = await seed_history(
                engine, changes(2, dimension="engagement") + changes(2, dimension="rfm")
            )
            events = await EventReader(r).next(2)
        bad = await client.get(
            "/v1/changes/stream", headers={**headers, "Last-Event-ID": "yesterday"}
        )
    assert [e.id for e in events] == new[2:]
    assert all(e.id > old[-1] for e in events)
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_last_event_id"


async def test_sigterm_ends_open_streams_and_the_server(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    await seed_history(engine, changes(1))
    headers = bearer(await make_key(engine, "segments:read"))
    async with (
        api_process(service_env, FAST) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
    ):
        async with client.stream(
            "GET", "/v1/changes/stream", params={"after": 0}, headers=headers
        ) as r:
            reader = EventReader(r)
            await reader.next(1)
            api.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(api.proc.wait(), 10)
            rest = await reader.rest()
        output = api.output()
    assert code == -signal.SIGTERM, output
    assert "Application shutdown complete" in output
    assert not any(line.startswith("id:") for line in rest)


async def test_a_revoked_key_ends_its_open_stream_and_gets_no_later_change(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    await seed_history(engine, changes(1))
    key = await make_key(engine, "segments:read")
    key_id = key_id_of(key)
    admin = bearer(await make_key(engine, "admin"))
    async with (
        api_process(service_env, FAST) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
    ):
        async with client.stream(
            "GET", "/v1/changes/stream", params={"after": 0}, headers=bearer(key)
        ) as r:
            reader = EventReader(r)
            await reader.next(1)
            revoked = await client.delete(f"/v1/admin/keys/{key_id}", headers=admin)
            assert revoked.status_code == 200
            after_revocation = await seed_history(engine, changes(3, customer="c-after"))
            # Generous: the stream checks its key at every poll (50 ms here).
            rest = await asyncio.wait_for(reader.rest(), 15)
        again = await client.get("/v1/changes/stream", headers=bearer(key))

        async def is_audited() -> bool:
            return bool(await audit_rows(engine, "changes.stream.end"))

        # While the API runs: its audit buffer is written every 500 ms, and lost to a kill.
        await eventually(is_audited, within_seconds=10, message="the stream's end audited")

    sent = {int(line.removeprefix("id: ")) for line in rest if line.startswith("id:")}
    assert not sent & set(after_revocation)
    assert ": the API key was revoked" in rest
    assert again.status_code == 401
    (end,) = await audit_rows(engine, "changes.stream.end")
    assert end["key_id"] == key_id
    assert end["detail"]["reason"] == "key_revoked"
