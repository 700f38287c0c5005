"""Each service starts with `python -m services.<name>`, reports ready, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, eventually, free_port, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def spawn(service_env: dict[str, str]) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**service_env, "STREAMSEG_LOG_JSON": "false", **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def service_extra(name: str, port: int) -> dict[str, str]:
    if name == "api":
        return {"STREAMSEG_API_PORT": str(port)}
    extra = {f"STREAMSEG_{name.upper()}_OPS_PORT": str(port)}
    if name == "ingest":
        extra |= {
            "STREAMSEG_INGEST_ORDERS_TOPIC": unique("orders"),
            "STREAMSEG_INGEST_INTERACTIONS_TOPIC": unique("interactions"),
            "STREAMSEG_INGEST_CUSTOMERS_TOPIC": unique("customers"),
            "STREAMSEG_INGEST_GROUP_ID": unique("g"),
            "STREAMSEG_INGEST_TOPIC_PARTITIONS": "1",
        }
    if name == "segmenter":
        extra["STREAMSEG_SEGMENTER_CHANGES_TOPIC"] = unique("changes")
    return extra


@pytest.mark.parametrize("name", ["ingest", "segmenter", "api"])
async def test_service_becomes_ready_and_stops_on_sigterm(name: str, spawn: object) -> None:
    port = free_port()
    proc = spawn(name, service_extra(name, port))  # type: ignore[operator]

    async with httpx.AsyncClient(timeout=5) as client:

        async def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                r = await client.get(f"http://127.0.0.1:{port}/readyz")
            except httpx.TransportError:
                return False
            return r.status_code == 200 and r.json()["status"] == "ok"

        await eventually(ready, within_seconds=60, message=f"{name} ready")
        live = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert live.status_code == 200
        metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200
        assert b"# HELP" in metrics.content

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    output = proc.stdout.read().decode()
    if name == "api":
        # uvicorn re-raises the signal after its graceful shutdown, as servers conventionally do.
        assert code == -signal.SIGTERM, output
        assert "Application shutdown complete" in output
    else:
        assert code == 0, output


@pytest.mark.parametrize("name", ["ingest", "segmenter", "api"])
async def test_service_refuses_a_schema_that_is_behind(
    name: str, spawn: object, service_env: dict[str, str]
) -> None:
    extra = service_extra(name, free_port()) | {"STREAMSEG_DATABASE_SCHEMA": unique("behind")}
    proc = spawn(name, extra)  # type: ignore[operator]
    code = await asyncio.to_thread(proc.wait, 60)
    output = proc.stdout.read().decode()
    assert code != 0
    assert "python -m shared.db upgrade" in output
