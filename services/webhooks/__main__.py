"""`python -m services.webhooks`: run one webhook dispatcher until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from contextlib import AsyncExitStack

import structlog

from services.webhooks.client import Clients
from services.webhooks.metrics import WebhooksMetrics
from services.webhooks.settings import WebhooksSettings
from services.webhooks.worker import Dispatcher
from shared.db.engine import create_engine
from shared.db.migrate import SchemaBehindError, require_current
from shared.health import check_kafka, check_postgres, overall
from shared.kafka import TopicSpec, ensure_topics, make_consumer
from shared.lifecycle import install_stop_handlers, settle_garbage_collector
from shared.logging import configure_logging
from shared.ops import OpsServer
from shared.settings import ConnectionSettings

log = structlog.get_logger("webhooks")


async def main(conn: ConnectionSettings, settings: WebhooksSettings) -> None:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    stopping = asyncio.Event()
    dispatcher: Dispatcher | None = None

    def stop() -> None:
        stopping.set()
        if dispatcher is not None:
            dispatcher.stop()

    install_stop_handlers(stop)
    async with AsyncExitStack() as stack:
        engine = create_engine(
            conn.database_url,
            conn.database_schema,
            application_name="webhooks",
            pre_ping=False,
            tls=conn.postgres_tls(),
        )
        security = conn.kafka_security()
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        await ensure_topics(
            conn.kafka_bootstrap,
            [TopicSpec(settings.changes_topic, settings.topic_partitions)],
            security=security,
        )
        clients = Clients(
            allow_private=settings.allow_private_targets,
            per_origin=settings.connections_per_origin,
            timeout_seconds=settings.request_timeout_seconds,
        )
        stack.push_async_callback(clients.aclose)
        consumer = make_consumer(
            conn.kafka_bootstrap,
            group_id=settings.group_id,
            security=security,
            client_id=f"webhooks-{owner}",
            max_poll_records=settings.max_poll_records,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        dispatcher = Dispatcher(settings, engine, consumer, clients, WebhooksMetrics(), owner)
        consumer.subscribe([settings.changes_topic], listener=dispatcher.intake.listener)
        await consumer.start()
        stack.push_async_callback(consumer.stop)

        async def liveness() -> dict[str, object]:
            return {"status": "ok", "in_flight": dispatcher.in_flight if dispatcher else 0}

        async def readiness() -> dict[str, object]:
            parts = list(
                await asyncio.gather(
                    check_postgres(engine), check_kafka(conn.kafka_bootstrap, security=security)
                )
            )
            return {"status": overall(parts), "components": parts}

        ops = OpsServer(
            settings.ops_host, settings.ops_port, liveness=liveness, readiness=readiness
        )
        await ops.start()
        stack.push_async_callback(ops.stop)
        if stopping.is_set():
            return
        log.info(
            "webhooks_started",
            owner=owner,
            topic=settings.changes_topic,
            ops_port=ops.port,
            allow_private_targets=settings.allow_private_targets,
        )
        settle_garbage_collector()
        await dispatcher.run()
        log.info("webhooks_stopped", delivered=dispatcher.delivered)


def cli() -> None:
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    try:
        asyncio.run(main(conn, WebhooksSettings()))
    except SchemaBehindError as exc:
        log.error("schema_behind", error=str(exc))
        sys.exit(3)


if __name__ == "__main__":
    cli()
