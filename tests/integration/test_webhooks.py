"""Webhooks end to end: changes made by the segmenter's own code, published by its outbox
to a real topic, delivered by `python -m services.webhooks` processes to a real HTTP
receiver on loopback, checked against the committed segment_history.

The receiver fails, times out, answers 5xx, 4xx and 410; signatures are verified with the
Standard Webhooks algorithm written out here, sharing no code with shared/webhooks; the
dispatcher is killed with SIGKILL half-way. No delivery may be lost, and the order of each
customer's changes must hold per subscription.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from shared.clock import FixedClock
from shared.events import SegmentChange, encode_segment_change
from shared.kafka import make_producer
from shared.segment_cache import SegmentCache
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, MakeTopic, eventually, free_port, unique
from tests.integration.test_api_support import bearer, make_key, running_api
from tests.integration.test_segmenter import DAY, NOW, random_histories, run_until_idle
from tests.support.receiver import Receiver
from tests.support.segmenter import evaluator, ruleset, scalar, seed

pytestmark = pytest.mark.integration


# The Standard Webhooks verification, written from the specification ----------------------
def verify(secret: str, headers: dict[str, str], body: bytes) -> list[bool]:
    """For each `v1` signature in the header, whether it is `secret`'s."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    out = []
    for part in headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        out.append(version == "v1" and hmac.compare_digest(signature.encode(), expected))
    return out


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and any(verify(secret, headers, body))


# Fixtures ---------------------------------------------------------------------------------
@dataclass
class Dispatchers:
    env: dict[str, str]
    log_dir: Path
    processes: list[subprocess.Popen[bytes]]

    def start(self, **overrides: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"webhooks-{len(self.processes)}.log"
        with path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.webhooks"],
                cwd=ROOT,
                env=self.env | overrides,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("webhooks-*.log")))


@pytest.fixture
async def changes_topic(make_topic: MakeTopic) -> str:
    return await make_topic("changes", partitions=4)


@pytest.fixture
def ops_port() -> int:
    return free_port()


@pytest.fixture
async def dispatchers(
    service_env: dict[str, str],
    changes_topic: str,
    tmp_path: Path,
    ops_port: int,
    engine: AsyncEngine,
) -> AsyncIterator[Dispatchers]:
    env = service_env | {
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": changes_topic,
        "STREAMSEG_WEBHOOKS_GROUP_ID": unique("g"),
        "STREAMSEG_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        "STREAMSEG_WEBHOOKS_RETRY_INITIAL_SECONDS": "0.05",
        "STREAMSEG_WEBHOOKS_RETRY_MAXIMUM_SECONDS": "0.3",
        "STREAMSEG_WEBHOOKS_RETRY_TOTAL_SECONDS": "300",
        "STREAMSEG_WEBHOOKS_REQUEST_TIMEOUT_SECONDS": "0.5",
        "STREAMSEG_WEBHOOKS_LEASE_SECONDS": "2",
        "STREAMSEG_WEBHOOKS_DISABLE_AFTER_SECONDS": "300",
        "STREAMSEG_WEBHOOKS_DISABLE_AFTER_FAILURES": "5",
        "STREAMSEG_WEBHOOKS_MAINTENANCE_INTERVAL_SECONDS": "0.5",
        "STREAMSEG_WEBHOOKS_OPS_PORT": str(ops_port),
        "STREAMSEG_LOG_JSON": "false",
    }
    d = Dispatchers(env, tmp_path, [])
    try:
        yield d
    finally:
        for p in d.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in d.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        print(d.logs()[-20000:])  # shown when the test fails
        print(await summary(engine))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def publish_outbox(engine: AsyncEngine, bootstrap: str, topic: str) -> None:
    """The segmenter's outbox publisher, until the outbox is empty."""
    stopping = asyncio.Event()
    publisher = OutboxPublisher(engine, bootstrap, topic, SegmenterMetrics(CollectorRegistry()))
    task = asyncio.create_task(publisher.run(stopping))

    async def drained() -> bool:
        return bool(await scalar(engine, "SELECT count(*) FROM segment_outbox") == 0)

    try:
        await eventually(drained, within_seconds=30, message="outbox drained")
    finally:
        stopping.set()
        await task


async def history(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, change_id::text AS change_id, customer_id, dimension, from_segment, "
                "to_segment, cause FROM segment_history ORDER BY id"
            )
        )
        return list(rows)


async def summary(engine: AsyncEngine) -> str:
    """The log by subscription and state, for a failing test's output."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT s.url, s.is_enabled, s.disabled_reason, d.status, d.failed_reason, "
                "d.next_attempt_at IS NULL AS waiting, d.leased_by IS NULL AS free, count(*), "
                "max(d.attempts), min(d.next_attempt_at) FROM webhook_deliveries d "
                "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
                "GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1"
            )
        )
        out = "\n".join(map(str, rows.all()))
        detail = await conn.execute(
            text(
                "SELECT d.id, d.customer_id, d.enqueued_at, d.deadline_at, a.attempt, "
                "a.attempted_at, a.status_code, a.error, a.latency_ms FROM webhook_deliveries d "
                "JOIN webhook_attempts a ON a.delivery_id = d.id "
                "WHERE d.failed_reason = 'exhausted' ORDER BY d.id, a.id LIMIT 12"
            )
        )
        return out + "\n" + "\n".join(map(str, detail.all()))


async def log_rows(engine: AsyncEngine, subscription_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, event_id, customer_id, status, failed_reason, attempts "
                "FROM webhook_deliveries WHERE subscription_id = :s ORDER BY id"
            ),
            {"s": subscription_id},
        )
        return list(rows)


def first_successes(receiver: Receiver, path: str) -> list[str]:
    """The webhook-ids answered 2xx on `path`, first time each, in arrival order."""
    seen: dict[str, None] = {}
    for r in receiver.requests:
        if r.path == path and 200 <= r.status < 300:
            seen.setdefault(r.headers["webhook-id"], None)
    return list(seen)


def per_customer(ids: list[str], customer_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        out[customer_of[i]].append(i)
    return dict(out)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


# The tests --------------------------------------------------------------------------------
async def test_deliveries_survive_failures_and_a_kill_in_order_per_customer(
    settings: ConnectionSettings,
    engine: AsyncEngine,
    redis: Redis,
    changes_topic: str,
    dispatchers: Dispatchers,
    receiver: Receiver,
) -> None:
    attempts: dict[tuple[str, str], int] = defaultdict(int)

    def behaviour(path: str, headers: dict[str, str], body: bytes) -> tuple[int, float]:
        n = attempts[path, headers["webhook-id"]] = attempts[path, headers["webhook-id"]] + 1
        if path == "/flaky":
            timeouts = int(headers["webhook-id"][:2], 16) % 3 == 0
            return {1: (500, 0.0), 2: (504, 1.0) if timeouts else (400, 0.0)}.get(n, (200, 0.0))
        return 200, 0.0

    receiver.behaviour = behaviour
    writer = bearer(await make_key(engine, "webhooks:write", "webhooks:read"))
    async with running_api(settings, webhooks_allow_private_targets=True) as (_, api):

        async def subscribe(path: str, **body: Any) -> dict[str, Any]:
            answer = await api.post(
                "/v1/webhooks", headers=writer, json={"url": receiver.url(path), **body}
            )
            assert answer.status_code == 201, answer.text
            return dict(answer.json())

        everything = await subscribe("/all")
        flaky = await subscribe("/flaky")
        lifecycle = await subscribe(
            "/lifecycle", filters={"dimensions": ["lifecycle"], "causes": ["event", "time"]}
        )
        rotating = await subscribe("/rot", secret="whsec_" + base64.b64encode(b"k" * 32).decode())
        assert everything["secret"].startswith("whsec_")
        assert "secret" not in (await api.get(f"/v1/webhooks/{flaky['id']}", headers=writer)).json()

        # Round 1: the segmenter's evaluations, published by its outbox.
        cache = SegmentCache(redis, settings.redis_key_prefix)
        await seed(engine, random_histories(40, 11, NOW), NOW)
        rules = await ruleset(engine)
        await run_until_idle(evaluator(engine, cache, FixedClock(NOW), rules))
        await publish_outbox(engine, settings.kafka_bootstrap, changes_topic)
        round_one = await history(engine)
        assert len({h.customer_id for h in round_one}) == 40

        first = dispatchers.start()

        async def some_delivered() -> bool:
            return len(first_successes(receiver, "/all")) >= len(round_one) // 3

        await eventually(some_delivered, within_seconds=60, message="a third delivered")
        first.send_signal(signal.SIGKILL)
        first.wait()
        dispatchers.start()
        # A second dispatcher shares the partitions and the log.
        dispatchers.start(STREAMSEG_WEBHOOKS_OPS_PORT="0")

        async def all_delivered(path: str, expected: int) -> bool:
            return len(first_successes(receiver, path)) >= expected

        await eventually(
            lambda: all_delivered("/rot", len(round_one)), within_seconds=60, message="round 1"
        )
        rotated = await api.post(
            f"/v1/webhooks/{rotating['id']}/rotate-secret", headers=writer, json={}
        )
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        round_one_ids = {h.change_id for h in round_one}

        # Round 2: 45 days on, the customers' wake-ups move them again (cause "time").
        await run_until_idle(evaluator(engine, cache, FixedClock(NOW + 45 * DAY), rules))
        await publish_outbox(engine, settings.kafka_bootstrap, changes_topic)
        changes = await history(engine)
        assert len(changes) > len(round_one)
        customer_of = {h.change_id: h.customer_id for h in changes}
        expected_all = [h.change_id for h in changes]
        expected_lifecycle = [
            h.change_id
            for h in changes
            if h.dimension == "lifecycle" and h.cause in ("event", "time")
        ]
        assert 0 < len(expected_lifecycle) < len(expected_all)

        for path, expected in (
            ("/all", expected_all),
            ("/flaky", expected_all),
            ("/lifecycle", expected_lifecycle),
            ("/rot", expected_all),
        ):
            await eventually(
                lambda p=path, e=expected: all_delivered(p, len(e)),  # type: ignore[misc]
                within_seconds=90,
                message=f"every change delivered to {path}",
            )
            got = first_successes(receiver, path)
            assert sorted(got) == sorted(expected), path
            assert per_customer(got, customer_of) == per_customer(expected, customer_of), path

        # Every request is signed; after the rotation by both secrets, old and new.
        secrets = {
            "/all": everything["secret"],
            "/flaky": flaky["secret"],
            "/lifecycle": lifecycle["secret"],
        }
        for r in receiver.requests:
            if r.path in secrets:
                assert signed_by(secrets[r.path], r.headers, r.body), r.headers
                assert r.headers["content-type"] == "application/json"
            if r.path == "/rot":
                marks = [
                    verify(rotating["secret"], r.headers, r.body),
                    verify(new_secret, r.headers, r.body),
                ]
                # Round 2 was made after the rotation: new secret first, the old one too.
                if r.headers["webhook-id"] not in round_one_ids:
                    assert marks == [[False, True], [True, False]], marks
                else:
                    assert marks in ([[True], [False]], [[False, True], [True, False]]), marks
        retried = [n for (p, _), n in attempts.items() if p == "/flaky"]
        assert min(retried) >= 3

    assert "Traceback" not in dispatchers.logs()


async def test_exhausted_gone_and_failing_deliveries_stay_failed_until_replayed(
    settings: ConnectionSettings,
    engine: AsyncEngine,
    changes_topic: str,
    dispatchers: Dispatchers,
    receiver: Receiver,
    ops_port: int,
) -> None:
    bad_is_fixed = False

    def behaviour(path: str, headers: dict[str, str], body: bytes) -> tuple[int, float]:
        if path == "/gone":
            return 410, 0.0
        return (200, 0.0) if bad_is_fixed else (400, 0.0)

    receiver.behaviour = behaviour
    writer = bearer(await make_key(engine, "webhooks:write", "webhooks:read"))
    async with running_api(settings, webhooks_allow_private_targets=True) as (_, api):
        made = [
            (await api.post("/v1/webhooks", headers=writer, json={"url": receiver.url(p)})).json()
            for p in ("/bad", "/gone")
        ]
        bad, gone = made
        # The changes, as the segmenter publishes them: keyed by customer, in order.
        expected: list[str] = []
        customer_of: dict[str, str] = {}
        producer = make_producer(settings.kafka_bootstrap, client_id="test")
        await producer.start()
        try:
            for sequence in range(1, 4):
                for c in range(8):
                    change_id = str(uuid.uuid4())
                    expected.append(change_id)
                    customer_of[change_id] = f"c-{c}"
                    await producer.send_and_wait(
                        changes_topic,
                        encode_segment_change(_change(f"c-{c}", sequence), change_id=change_id),
                        key=f"c-{c}".encode(),
                    )
        finally:
            await producer.stop()
        dispatchers.start(
            STREAMSEG_WEBHOOKS_RETRY_TOTAL_SECONDS="1.5",
            STREAMSEG_WEBHOOKS_DISABLE_AFTER_SECONDS="3",
        )

        async def disabled(subscription: dict[str, Any], reason: str) -> bool:
            view = (await api.get(f"/v1/webhooks/{subscription['id']}", headers=writer)).json()
            return not view["enabled"] and view["disabled_reason"].startswith(reason)

        # 410: disabled at once; everything of it failed, nothing pending.
        await eventually(lambda: disabled(gone, "gone"), message="410 disables")
        gone_log = await log_rows(engine, gone["id"])
        assert len(gone_log) == len(expected)
        assert {r.status for r in gone_log} == {"failed"}
        assert "gone" in {r.failed_reason for r in gone_log}

        # 400 until the deadline: exhausted, then disabled as failing; kept as failed.
        await eventually(lambda: disabled(bad, "failing"), message="failing disables")

        async def bad_settled() -> bool:
            rows = await log_rows(engine, bad["id"])
            return len(rows) == len(expected) and all(r.status == "failed" for r in rows)

        await eventually(bad_settled, message="every /bad delivery failed")
        reasons = {r.failed_reason for r in await log_rows(engine, bad["id"])}
        assert "exhausted" in reasons, reasons
        text_metrics = metrics(ops_port)
        assert 'streamseg_webhooks_subscriptions_disabled_total{reason="failing"} 1.0' in (
            text_metrics
        )
        assert 'streamseg_webhooks_subscriptions_disabled_total{reason="gone"} 1.0' in (
            text_metrics
        )
        page = (
            await api.get(
                f"/v1/webhooks/{bad['id']}/deliveries", headers=writer, params={"limit": 500}
            )
        ).json()
        one = page["items"][-1]
        detail = (
            await api.get(f"/v1/webhooks/{bad['id']}/deliveries/{one['id']}", headers=writer)
        ).json()
        assert detail["attempt_log"]
        assert detail["attempt_log"][0]["status_code"] == 400
        assert detail["attempt_log"][0]["latency_ms"] > 0

        # Replay needs the subscription enabled; then every delivery from the first change.
        first_change = (await log_rows(engine, bad["id"]))[0].event_id
        refused = await api.post(
            f"/v1/webhooks/{bad['id']}/replay",
            headers=writer,
            json={"from_change_id": first_change},
        )
        assert refused.status_code == 409
        bad_is_fixed = True
        enabled = await api.patch(
            f"/v1/webhooks/{bad['id']}", headers=writer, json={"enabled": True}
        )
        assert enabled.json()["enabled"]
        assert enabled.json()["consecutive_failures"] == 0
        replayed = await api.post(
            f"/v1/webhooks/{bad['id']}/replay",
            headers=writer,
            json={"from_change_id": first_change},
        )
        assert replayed.json() == {"replayed": len(expected)}

        async def replayed_all() -> bool:
            return len(first_successes(receiver, "/bad")) == len(expected)

        await eventually(replayed_all, within_seconds=60, message="replayed")
        got = first_successes(receiver, "/bad")
        assert per_customer(got, customer_of) == per_customer(expected, customer_of)

        async def all_logged_delivered() -> bool:
            return {r.status for r in await log_rows(engine, bad["id"])} == {"delivered"}

        await eventually(all_logged_delivered, message="the log says delivered")


def _change(customer_id: str, sequence: int) -> SegmentChange:
    return SegmentChange(
        customer_id=customer_id,
        dimension="lifecycle",
        from_segment=None if sequence == 1 else f"s{sequence - 1}",
        to_segment=f"s{sequence}",
        reason="test",
        cause="event",
        definition_version=1,
        caused_by_event_time=None,
        evaluated_at=NOW + sequence * DAY,
        sequence=sequence,
    )


async def test_private_targets_are_refused_before_any_connection(
    settings: ConnectionSettings,
    engine: AsyncEngine,
    changes_topic: str,
    dispatchers: Dispatchers,
    receiver: Receiver,
) -> None:
    writer = bearer(await make_key(engine, "webhooks:write", "webhooks:read"))
    # At subscription time, with the setting off (the default).
    async with running_api(settings) as (_, api):
        for url in (
            receiver.url("/x"),
            receiver.url("/x", host="localhost"),
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:80/",
            "http://10.1.2.3/",
        ):
            answer = await api.post("/v1/webhooks", headers=writer, json={"url": url})
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["error"] == "webhook_target_refused"
        assert (
            await api.post("/v1/webhooks", headers=writer, json={"url": "file:///etc/passwd"})
        ).status_code == 422
    assert receiver.connections == 0
    # At delivery time: a subscription written while private targets were allowed, then a
    # dispatcher that does not allow them. The name is resolved again and refused.
    async with running_api(settings, webhooks_allow_private_targets=True) as (_, api):
        answer = await api.post(
            "/v1/webhooks", headers=writer, json={"url": receiver.url("/x", host="localhost")}
        )
        assert answer.status_code == 201
        subscription = answer.json()["id"]
    dispatchers.start(STREAMSEG_WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    change = SegmentChange(
        customer_id="c-1",
        dimension="lifecycle",
        from_segment=None,
        to_segment="new",
        reason="test",
        cause="event",
        definition_version=1,
        caused_by_event_time=None,
        evaluated_at=NOW,
        sequence=1,
    )
    producer = make_producer(settings.kafka_bootstrap, client_id="test")
    await producer.start()
    try:
        change_id = str(uuid.uuid4())
        await producer.send_and_wait(
            changes_topic, encode_segment_change(change, change_id=change_id), key=b"c-1"
        )
    finally:
        await producer.stop()

    async def refused() -> bool:
        async with engine.connect() as conn:
            error = (
                await conn.execute(
                    text(
                        "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d "
                        "ON d.id = a.delivery_id WHERE d.subscription_id = :s LIMIT 1"
                    ),
                    {"s": subscription},
                )
            ).scalar_one_or_none()
        return error is not None and error.startswith("refused:")

    await eventually(refused, within_seconds=30, message="the delivery refused")
    assert receiver.connections == 0


async def test_webhook_routes_check_scopes_secrets_and_answer_404(
    settings: ConnectionSettings, engine: AsyncEngine, receiver: Receiver
) -> None:
    reader = bearer(await make_key(engine, "webhooks:read"))
    writer = bearer(await make_key(engine, "webhooks:write"))
    segments = bearer(await make_key(engine, "segments:read"))
    async with running_api(settings, webhooks_allow_private_targets=True) as (_, api):
        body = {"url": receiver.url("/x")}
        assert (await api.post("/v1/webhooks", headers=reader, json=body)).status_code == 403
        assert (await api.get("/v1/webhooks", headers=segments)).status_code == 403
        bad = await api.post("/v1/webhooks", headers=writer, json=body | {"secret": "whsec_AAAA"})
        assert bad.status_code == 422
        assert bad.json()["error"] == "invalid_webhook_secret"
        unknown = await api.post(
            "/v1/webhooks", headers=writer, json=body | {"filters": {"causes": ["nope"]}}
        )
        assert unknown.status_code == 422
        made = await api.post("/v1/webhooks", headers=writer, json=body)
        assert made.status_code == 201
        sid = made.json()["id"]
        listed = (await api.get("/v1/webhooks", headers=reader)).json()["subscriptions"]
        assert [s["id"] for s in listed] == [sid]
        assert "secret" not in listed[0]
        missing = f"/v1/webhooks/{uuid.uuid4()}"
        assert (await api.get(missing, headers=reader)).status_code == 404
        assert (await api.delete(missing, headers=writer)).status_code == 404
        replay = await api.post(
            f"/v1/webhooks/{sid}/replay", headers=writer, json={"change_id": "nope"}
        )
        assert replay.status_code == 404
        both = await api.post(
            f"/v1/webhooks/{sid}/replay", headers=writer, json={"change_id": "a", "delivery_id": 1}
        )
        assert both.status_code == 422
        rotated = await api.post(
            f"/v1/webhooks/{sid}/rotate-secret", headers=writer, json={"grace_seconds": 0}
        )
        assert rotated.json()["previous_secret_expires_at"] is None
        assert (await api.delete(f"/v1/webhooks/{sid}", headers=writer)).status_code == 204
    async with engine.connect() as conn:
        actions = (
            (
                await conn.execute(
                    text("SELECT action FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id")
                )
            )
            .scalars()
            .all()
        )
    assert actions == ["webhook.create", "webhook.rotate_secret", "webhook.delete"]
