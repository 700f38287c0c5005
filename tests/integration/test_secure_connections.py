"""The services against components that speak only TLS, and Kafka only SASL_SSL or mutual TLS:
configured as docs/configuration.md says for managed services, with every secret from a file.

The servers (tests/support/tls.py) refuse what is not secured: PostgreSQL rejects plaintext in
pg_hba, Redis has no plaintext port, Kafka has no plaintext listener. So a client that
ignored a setting fails here; the negative tests show that each check does reject.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO
from unittest import mock

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from shared.db.engine import create_engine
from shared.events import OrderPlaced, encode_event
from shared.health import check_kafka, check_postgres, check_redis
from shared.kafka import (
    TopicSpec,
    delete_topics,
    ensure_topics,
    make_consumer,
    make_producer,
    topic_retention_ms,
)
from shared.redis import make_redis
from shared.security import KafkaSecurity, PostgresTls, RedisTls
from shared.settings import ConnectionSettings
from tests.conftest import ROOT, eventually, free_port, unique
from tests.support.ingest import produce
from tests.support.tls import (
    Certificates,
    SecureKafka,
    TlsPostgres,
    TlsRedis,
    make_certificates,
    secure_kafka,
    tls_postgres,
    tls_redis,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class SecureStack:
    certs: Certificates
    pg: TlsPostgres
    redis: TlsRedis
    kafka: SecureKafka


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """The three servers, started once for the module."""
    base = tmp_path_factory.mktemp("secure")
    certs = make_certificates(base / "certs")
    with ExitStack() as stack:
        kafka = stack.enter_context(secure_kafka(certs, base / "logs"))
        pg = stack.enter_context(tls_postgres(certs, base / "logs"))
        redis = stack.enter_context(tls_redis(certs, base / "logs"))
        yield SecureStack(certs, pg, redis, kafka)


def secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")  # as `echo` writes it: the line break is not the secret
    path.chmod(0o600)
    return str(path)


def managed_env(secure: SecureStack, secrets: Path, mechanism: str) -> dict[str, str]:
    """The managed-service example of docs/configuration.md, pointed at our servers."""
    secrets.mkdir(exist_ok=True)
    return {
        "STREAMSEG_DATABASE_URL": secure.pg.url(password=False),
        "STREAMSEG_DATABASE_PASSWORD_FILE": secret_file(secrets, "db", secure.pg.password),
        "STREAMSEG_DATABASE_SSLMODE": "verify-full",
        "STREAMSEG_DATABASE_SSL_ROOT_CERT_FILE": str(secure.certs.ca),
        "STREAMSEG_REDIS_URL_FILE": secret_file(secrets, "redis", secure.redis.url()),
        "STREAMSEG_REDIS_SSL_CA_FILE": str(secure.certs.ca),
        "STREAMSEG_KAFKA_BOOTSTRAP": secure.kafka.sasl_bootstrap,
        "STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMSEG_KAFKA_SASL_MECHANISM": mechanism,
        "STREAMSEG_KAFKA_SASL_USERNAME": secure.kafka.user,
        "STREAMSEG_KAFKA_SASL_PASSWORD_FILE": secret_file(secrets, "kafka", secure.kafka.password),
        "STREAMSEG_KAFKA_SSL_CA_FILE": str(secure.certs.ca),
    }


def settings_of(env: dict[str, str]) -> ConnectionSettings:
    """The settings a process started with `env` reads, read the same way (from the
    environment, and nothing from this one's STREAMSEG_ variables)."""
    own = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    ours = {k: v for k, v in env.items() if k.startswith("STREAMSEG_")}
    with mock.patch.dict(os.environ, own | ours, clear=True):
        return ConnectionSettings()


@pytest.fixture
async def schema(secure: SecureStack) -> AsyncIterator[str]:
    name = unique("tls")
    yield name
    engine = create_engine(secure.pg.url(), tls=PostgresTls("verify-full", secure.certs.ca))
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    await engine.dispose()


class Services:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, name: str, extra: dict[str, str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**self.env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = (proc, log)

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def alive(self, name: str) -> None:
        proc, _ = self.procs[name]
        assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{self.output(name)}"

    def stop(self) -> dict[str, int]:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, (proc, log) in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
            log.close()
        return codes


def run_tool(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


async def test_the_services_ingest_segment_publish_and_serve_over_tls_and_sasl_ssl(
    secure: SecureStack, schema: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    env |= managed_env(secure, tmp_path / "secrets", "SCRAM-SHA-512")
    prefix = unique("tls") + ":"
    topics = {name: unique(name) for name in ("orders", "interactions", "customers", "changes")}
    env |= {
        "STREAMSEG_DATABASE_SCHEMA": schema,
        "STREAMSEG_REDIS_KEY_PREFIX": prefix,
        "STREAMSEG_LOG_JSON": "false",
        "STREAMSEG_INGEST_ORDERS_TOPIC": topics["orders"],
        "STREAMSEG_INGEST_INTERACTIONS_TOPIC": topics["interactions"],
        "STREAMSEG_INGEST_CUSTOMERS_TOPIC": topics["customers"],
        "STREAMSEG_INGEST_TOPIC_PARTITIONS": "1",
        "STREAMSEG_INGEST_GROUP_ID": unique("g"),
        "STREAMSEG_SEGMENTER_CHANGES_TOPIC": topics["changes"],
        "STREAMSEG_SEGMENTER_TOPIC_PARTITIONS": "1",
        "PYTHONPATH": str(ROOT),
    }
    conn = settings_of(env)
    security = conn.kafka_security()
    # The tools first: migrations (alembic on the TLS engine) and an API key.
    assert "at " in run_tool(env, "shared.db", "upgrade")
    key_out = run_tool(
        env, "services.api.keys", "create", "--name", "tls", "--scope", "segments:read"
    )
    key = next(line.split()[1] for line in key_out.splitlines() if line.startswith("key:"))

    ports = {"ingest": free_port(), "segmenter": free_port(), "api": free_port()}
    services = Services(env, tmp_path)
    services.start("ingest", {"STREAMSEG_INGEST_OPS_PORT": str(ports["ingest"])})
    services.start("segmenter", {"STREAMSEG_SEGMENTER_OPS_PORT": str(ports["segmenter"])})
    services.start("api", {"STREAMSEG_API_PORT": str(ports["api"])})
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for name, port in ports.items():

                async def ready(name: str = name, port: int = port) -> bool:
                    services.alive(name)
                    try:
                        r = await client.get(f"http://127.0.0.1:{port}/readyz")
                    except httpx.TransportError:
                        return False
                    # Each component probed through its secured connection.
                    return r.status_code == 200 and r.json()["status"] == "ok"

                await eventually(ready, within_seconds=90, message=f"{name} ready")

            now = datetime.now(UTC).replace(microsecond=0)
            customers = [f"tls-{i}" for i in range(5)]
            records = [
                (
                    topics["orders"],
                    c.encode(),
                    encode_event(
                        OrderPlaced(
                            event_id=f"{c}-o{n}",
                            customer_id=c,
                            order_id=f"o{n}",
                            occurred_at=now - timedelta(days=n + 1),
                            amount=Decimal("25.00"),
                            currency="EUR",
                        )
                    ),
                )
                for c in customers
                for n in range(3)
            ]
            await produce(conn.kafka_bootstrap, records, security=security)

            async def served() -> bool:
                for name in ports:
                    services.alive(name)
                for c in customers:
                    r = await client.get(
                        f"http://127.0.0.1:{ports['api']}/v1/customers/{c}/segments",
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    if r.status_code != 200 or r.json()["aggregates"]["order_count"] != 3:
                        return False
                    assert r.json()["segments"], r.text
                return True

            await eventually(served, within_seconds=90, message="segments served")

        # Published: segment changes on the SASL_SSL topic, keyed by customer.
        consumer = make_consumer(
            conn.kafka_bootstrap, topics["changes"], group_id=unique("g"), security=security
        )
        await consumer.start()
        seen: set[str] = set()
        try:

            async def published() -> bool:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    seen.update((r.key or b"").decode() for r in batch)
                return set(customers) <= seen

            await eventually(published, within_seconds=60, message="changes published")
        finally:
            await consumer.stop()

        # Cached: the segmenter wrote the customers' documents to the TLS Redis.
        redis = make_redis(conn.redis_url, tls=conn.redis_tls())
        try:
            cached = [k async for k in redis.scan_iter(match=prefix + "*", count=1000)]
        finally:
            await redis.aclose()
        assert cached, "nothing cached in the TLS Redis"

        # Every service's PostgreSQL session is TLS (the server refuses others anyway).
        engine = create_engine(conn.database_url, schema, tls=conn.postgres_tls())
        try:
            async with engine.connect() as db:
                rows = (
                    await db.execute(
                        text(
                            "SELECT a.application_name, bool_and(s.ssl) AS ssl"
                            " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                            " WHERE a.application_name IN ('ingest', 'segmenter', 'api')"
                            " GROUP BY a.application_name"
                        )
                    )
                ).all()
        finally:
            await engine.dispose()
        assert dict(rows) == {"ingest": True, "segmenter": True, "api": True}
    finally:
        codes = services.stop()
    failed = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
    assert not failed, {n: services.output(n) for n in failed}
    await delete_topics(
        conn.kafka_bootstrap,
        [*topics.values(), *(t + ".dlq" for t in list(topics.values())[:3])],
        security=security,
    )


async def round_trip(bootstrap: str, security: KafkaSecurity) -> None:
    """Every factory of shared/kafka.py and the probe, through `security`."""
    topic = unique("tls")
    await ensure_topics(bootstrap, [TopicSpec(topic, 1)], security=security)
    try:
        assert (await check_kafka(bootstrap, security=security))["status"] == "ok"
        assert topic in await topic_retention_ms(bootstrap, [topic], security=security)
        producer = make_producer(bootstrap, security=security, transactional_id=unique("tx"))
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, b"secured", key=b"k")
        finally:
            await producer.stop()
        consumer = make_consumer(bootstrap, topic, group_id=unique("g"), security=security)
        await consumer.start()
        try:
            got: list[bytes] = []

            async def arrived() -> bool:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value or b"" for r in batch)
                return got == [b"secured"]

            await eventually(arrived, within_seconds=30, message="record consumed")
        finally:
            await consumer.stop()
    finally:
        await delete_topics(bootstrap, [topic], security=security)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_each_sasl_mechanism_round_trips_through_the_factories(
    secure: SecureStack, tmp_path: Path, mechanism: str
) -> None:
    conn = settings_of(managed_env(secure, tmp_path, mechanism))
    await round_trip(conn.kafka_bootstrap, conn.kafka_security())


async def test_mutual_tls_round_trips_with_a_client_certificate(
    secure: SecureStack, tmp_path: Path
) -> None:
    env = managed_env(secure, tmp_path, "PLAIN")
    for name in ("MECHANISM", "USERNAME", "PASSWORD_FILE"):
        del env[f"STREAMSEG_KAFKA_SASL_{name}"]
    env |= {
        "STREAMSEG_KAFKA_BOOTSTRAP": secure.kafka.ssl_bootstrap,
        "STREAMSEG_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMSEG_KAFKA_SSL_CERT_FILE": str(secure.certs.client_cert),
        "STREAMSEG_KAFKA_SSL_KEY_FILE": str(secure.certs.client_key),
    }
    conn = settings_of(env)
    await round_trip(conn.kafka_bootstrap, conn.kafka_security())
    # The listener requires the certificate: without one, nothing connects.
    bare = KafkaSecurity("SSL", ca_file=secure.certs.ca)
    report = await check_kafka(conn.kafka_bootstrap, security=bare)
    assert report["status"] == "failing", report


async def test_what_is_not_secured_or_not_trusted_is_refused(secure: SecureStack) -> None:
    certs, kafka = secure.certs, secure.kafka

    def sasl(**overrides: object) -> KafkaSecurity:
        fields: dict[str, object] = {
            "protocol": "SASL_SSL",
            "ca_file": certs.ca,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": kafka.user,
            "sasl_password": kafka.password,
        }
        return KafkaSecurity(**(fields | overrides))  # type: ignore[arg-type]

    assert (await check_kafka(kafka.sasl_bootstrap, security=sasl()))["status"] == "ok"
    refused = {
        "wrong password": sasl(sasl_password="not-it"),
        "unknown user": sasl(sasl_username="mallory"),
        "untrusted broker certificate": sasl(ca_file=certs.other_ca),
        "plaintext to a TLS listener": KafkaSecurity(),
    }
    for why, security in refused.items():
        report = await check_kafka(kafka.sasl_bootstrap, 5.0, security=security)
        assert report["status"] == "failing", (why, report)

    good_pg = create_engine(secure.pg.url(), tls=PostgresTls("verify-full", certs.ca))
    assert (await check_postgres(good_pg))["status"] == "ok"
    await good_pg.dispose()
    for why, tls in {
        "plaintext (pg_hba rejects it)": PostgresTls("disable"),
        "untrusted server certificate": PostgresTls("verify-full", certs.other_ca),
    }.items():
        engine = create_engine(secure.pg.url(), tls=tls)
        try:
            report = await check_postgres(engine, 5.0)
        finally:
            await engine.dispose()
        assert report["status"] == "failing", (why, report)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(secure.pg.url().replace("+asyncpg", ""), ssl=False)

    url = secure.redis.url()
    good_redis = make_redis(url, tls=RedisTls(certs.ca))
    assert (await check_redis(good_redis))["status"] == "ok"
    await good_redis.aclose()
    for why, (url, redis_tls) in {
        "untrusted server certificate": (secure.redis.url(), RedisTls(certs.other_ca)),
        "plaintext to the TLS port": (secure.redis.url().replace("rediss", "redis"), RedisTls()),
        "wrong password": (
            secure.redis.url().replace(secure.redis.password, "x"),
            RedisTls(certs.ca),
        ),
    }.items():
        client = make_redis(url, tls=redis_tls, retries=0)
        try:
            report = await check_redis(client, 3.0)
        finally:
            await client.aclose()
        assert report["status"] == "failing", (why, report)


async def test_a_bad_setting_stops_a_service_at_start_naming_it(
    secure: SecureStack, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    env |= managed_env(secure, tmp_path, "SCRAM-SHA-512")
    env["STREAMSEG_KAFKA_SASL_PASSWORD"] = "also-set"
    env["PYTHONPATH"] = str(ROOT)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        "STREAMSEG_KAFKA_SASL_PASSWORD and STREAMSEG_KAFKA_SASL_PASSWORD_FILE are both set"
        in done.stderr
    ), done.stderr
    assert "also-set" not in done.stderr
    assert secure.kafka.password not in done.stderr
