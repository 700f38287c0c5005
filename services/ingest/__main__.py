"""`python -m services.ingest`: run one ingest worker until SIGTERM; `python -m
services.ingest verify [--repair]` checks the stored aggregates (services/ingest/verify.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from contextlib import AsyncExitStack
from datetime import timedelta

import structlog

from services.ingest import repository as repo
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from services.ingest.worker import IngestWorker
from shared.clock import clock_from_setting
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import SchemaBehindError, require_current
from shared.health import check_kafka, check_postgres, overall
from shared.kafka import (
    TopicSpec,
    dlq_topic,
    ensure_topics,
    make_consumer,
    make_producer,
    topic_retention_ms,
)
from shared.lifecycle import install_stop_handlers, settle_garbage_collector
from shared.logging import configure_logging
from shared.ops import OpsServer
from shared.security import KafkaSecurity
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
        engine = create_engine(
            conn.database_url,
            conn.database_schema,
            application_name="ingest",
            pre_ping=False,
            tls=conn.postgres_tls(),
        )
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        async with pg_connection(engine) as db:
            # What definitions may count: the API rejects a window over interactions
            # longer than this (shared/facts).
            await repo.record_retention(
                db,
                "interactions",
                timedelta(days=settings.interaction_retention_days),
                "STREAMSEG_INGEST_INTERACTION_RETENTION_DAYS",
            )
        topics = [settings.orders_topic, settings.interactions_topic, settings.customers_topic]
        security = conn.kafka_security()
        await ensure_topics(
            conn.kafka_bootstrap,
            [TopicSpec(t, settings.topic_partitions) for t in topics]
            + [TopicSpec(dlq_topic(t), settings.topic_partitions) for t in topics],
            security=security,
        )
        dedup_window = await dedup_window_for(conn.kafka_bootstrap, security, topics, settings)
        producer = make_producer(
            conn.kafka_bootstrap, security=security, client_id=f"ingest-dlq-{owner}"
        )
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = make_consumer(
            conn.kafka_bootstrap,
            group_id=settings.group_id,
            security=security,
            client_id=f"ingest-{owner}",
            max_poll_records=settings.max_batch_records,
            fetch_min_bytes=settings.fetch_min_bytes,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        worker = IngestWorker(
            settings,
            engine,
            consumer,
            producer,
            clock_from_setting(settings.clock),
            IngestMetrics(),
            owner,
            dedup_window=dedup_window,
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
                await asyncio.gather(
                    check_postgres(engine), check_kafka(conn.kafka_bootstrap, security=security)
                )
            )
            return {"status": overall(parts), "components": parts, "lag": worker.total_lag()}

        ops = OpsServer(
            settings.ops_host, settings.ops_port, liveness=liveness, readiness=readiness
        )
        await ops.start()
        stack.push_async_callback(ops.stop)
        if stopping.is_set():
            return
        log.info(
            "ingest_started",
            owner=owner,
            topics=topics,
            ops_port=ops.port,
            dedup_window_days=round(dedup_window / timedelta(days=1), 3),
        )
        settle_garbage_collector()
        await worker.run()
        log.info("ingest_stopped", batches=worker.batches_committed)


class DedupWindowError(Exception):
    """The dedup window cannot be set from the input topics' retention."""


async def dedup_window_for(
    bootstrap: str, security: KafkaSecurity, topics: list[str], settings: IngestSettings
) -> timedelta:
    """As long as the longest input topic keeps records, so that any duplicate still held
    by a topic (a replay, a producer retrying late) is recognised, or longer if set."""
    retention = await topic_retention_ms(bootstrap, topics, security=security)
    forever = sorted(t for t, ms in retention.items() if ms < 0)
    if forever and settings.dedup_window_days is None:
        raise DedupWindowError(
            f"topic {', '.join(forever)} keeps records forever (retention.ms=-1), so the "
            "window for recognising duplicates cannot follow it: set "
            "STREAMSEG_INGEST_DEDUP_WINDOW_DAYS to how far back a duplicate may arrive"
        )
    longest = max((ms for ms in retention.values() if ms >= 0), default=0)
    window = timedelta(milliseconds=longest)
    if settings.dedup_window_days is not None:
        window = max(window, timedelta(days=settings.dedup_window_days))
    return window


def cli() -> None:
    if sys.argv[1:2] == ["verify"]:
        from services.ingest import verify

        verify.cli(sys.argv[2:])
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    try:
        asyncio.run(main(conn, IngestSettings()))
    except SchemaBehindError as exc:
        log.error("schema_behind", error=str(exc))
        sys.exit(3)
    except DedupWindowError as exc:
        log.error("dedup_window_unknown", error=str(exc))
        sys.exit(2)


if __name__ == "__main__":
    cli()
