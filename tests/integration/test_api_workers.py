"""Several API processes (STREAMSEG_API_WORKERS): one port, metrics added up over all of them,
and a stop signal that ends open change streams in every worker and then the server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from contextlib import AsyncExitStack

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import eventually
from tests.integration.test_api_stream import FAST, EventReader, changes
from tests.integration.test_api_support import api_process, bearer, make_key, seed_history

pytestmark = pytest.mark.integration

WORKERS = {**FAST, "STREAMSEG_API_WORKERS": "2"}
NOT_FOUND = re.compile(
    r'streamseg_api_requests_total\{method="GET",'
    r'route="/v1/customers/\{customer_id\}/segments",status="404"\} (\S+)'
)


async def test_workers_share_the_port_and_report_metrics_together(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    headers = bearer(await make_key(engine, "segments:read"))
    async with api_process(service_env, WORKERS) as api:
        for i in range(40):
            # A new connection each time, so that both workers get some.
            async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
                r = await client.get(f"/v1/customers/nobody-{i}/segments", headers=headers)
                assert r.status_code == 404, r.text
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            metrics = (await client.get("/metrics")).text
    found = NOT_FOUND.search(metrics)
    assert found is not None, metrics
    assert float(found.group(1)) == 40


async def test_sigterm_ends_open_streams_in_every_worker_and_the_server(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    await seed_history(engine, changes(1))
    headers = bearer(await make_key(engine, "segments:read"))
    async with api_process(service_env, WORKERS) as api, AsyncExitStack() as stack:

        async def both_started() -> bool:
            return api.output().count("Application startup complete") == 2

        # The port answers once one worker is up; a worker stopped while it starts says nothing.
        await eventually(both_started, within_seconds=30, message="both workers started")
        # Four connections, so that (most likely) each worker has a stream open.
        for _ in range(4):
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=api.url))
            r = await stack.enter_async_context(
                client.stream("GET", "/v1/changes/stream", params={"after": 0}, headers=headers)
            )
            await EventReader(r).next(1)
        api.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(api.proc.wait(), 10)
        output = api.output()
    assert code == 0, output
    assert output.count("Application shutdown complete") == 2, output


async def test_workers_exit_when_their_parent_is_killed(
    engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    async with api_process(service_env, WORKERS) as api:

        async def started() -> bool:
            return "api_workers_started" in api.output()

        await eventually(started, within_seconds=30, message="workers started")
        found = re.search(r"pids=\[(\d+), (\d+)\]", api.output())
        assert found is not None, api.output()
        pids = [int(found.group(1)), int(found.group(2))]
        assert all(_is_alive(pid) for pid in pids)
        api.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(api.proc.wait(), 10)

        async def workers_gone() -> bool:
            return not any(_is_alive(pid) for pid in pids)

        # Orphans would go on serving the port with nobody to stop or restart them.
        await eventually(workers_gone, within_seconds=15, message="workers exited")


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An exited orphan is reaped by init at once; a zombie here would still count as alive.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
