"""`python -m services.ingest`: run one ingest worker until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from contextlib import AsyncExitStack

import structlog

from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from services.ingest.worker import IngestWorker
from shared.clock import clock_from_setting
from shared.db.engine import create_engine
from shared.db.migrate import SchemaBehindError, require_current
from shared.health import check_kafka, check_postgres, overall
from shared.kafka import TopicSpec, dlq_topic, ensure_topics, make_consumer, make_producer
from shared.lifecycle import install_stop_handlers, settle_garbage_collector
from shared.logging import configure_logging
from shared.ops import OpsServer
from shared.settings import ConnectionSettings

log = structlog.get_logger("ingest")


async def main(conn: ConnectionSettings, settings: IngestSettings) -> None:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    # Signals are handled from the very start, so SIGTERM during start-up is a clean stop too.
    stopping = asyncio.Event()
    worker: IngestWorker | None = None

    def stop() -> None:
        stopping.set()
        if worker is not None:
            worker.stop()

    install_stop_handlers(stop)
    async with AsyncExitStack() as stack:
        engine = create_engine(conn.database_url, conn.database_schema, application_name="ingest")
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        topics = [settings.orders_topic, settings.interactions_topic]
        await ensure_topics(
            conn.kafka_bootstrap,
            [TopicSpec(t, settings.topic_partitions) for t in topics]
            + [TopicSpec(dlq_topic(t), settings.topic_partitions) for t in topics],
        )
        producer = make_producer(conn.kafka_bootstrap, client_id=f"ingest-dlq-{owner}")
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = make_consumer(
            conn.kafka_bootstrap,
            group_id=settings.group_id,
            client_id=f"ingest-{owner}",
            max_poll_records=settings.max_batch_records,
        )
        worker = IngestWorker(
            settings,
            engine,
            consumer,
            producer,
            clock_from_setting(settings.clock),
            IngestMetrics(),
            owner,
        )
        consumer.subscribe(topics, listener=worker.listener)
        await consumer.start()
        stack.push_async_callback(consumer.stop)

        async def liveness() -> dict[str, object]:
            stalled = worker.is_stalled()
            return {
                "status": "failing" if stalled else "ok",
                "lag": worker.total_lag(),
                "stalled": stalled,
                "unclaimed_partitions": worker.unclaimed,
            }

        async def readiness() -> dict[str, object]:
            parts = list(
                await asyncio.gather(check_postgres(engine), check_kafka(conn.kafka_bootstrap))
            )
            return {"status": overall(parts), "components": parts, "lag": worker.total_lag()}

        ops = OpsServer(
            settings.ops_host, settings.ops_port, liveness=liveness, readiness=readiness
        )
        await ops.start()
        stack.push_async_callback(ops.stop)
        if stopping.is_set():
            return
        log.info("ingest_started", owner=owner, topics=topics, ops_port=ops.port)
        settle_garbage_collector()
        await worker.run()
        log.info("ingest_stopped", batches=worker.batches_committed)


def cli() -> None:
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    try:
        asyncio.run(main(conn, IngestSettings()))
    except SchemaBehindError as exc:
        log.error("schema_behind", error=str(exc))
        sys.exit(3)


if __name__ == "__main__":
    cli()
