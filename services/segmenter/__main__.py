"""`python -m services.segmenter`: run one segmenter process until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

import structlog

from services.segmenter.settings import SegmenterSettings
from shared.db.engine import create_engine
from shared.db.migrate import SchemaBehindError, require_current
from shared.health import check_kafka, check_postgres, check_redis, overall
from shared.kafka import TopicSpec, ensure_topics
from shared.lifecycle import install_stop_handlers
from shared.logging import configure_logging
from shared.ops import OpsServer
from shared.redis import make_redis
from shared.settings import ConnectionSettings

log = structlog.get_logger("segmenter")


async def main(conn: ConnectionSettings, settings: SegmenterSettings) -> None:
    async with AsyncExitStack() as stack:
        engine = create_engine(
            conn.database_url, conn.database_schema, application_name="segmenter"
        )
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        redis = make_redis(conn.redis_url)
        stack.push_async_callback(redis.aclose)
        await ensure_topics(
            conn.kafka_bootstrap, [TopicSpec(settings.changes_topic, settings.topic_partitions)]
        )
        stopped = asyncio.Event()

        async def liveness() -> dict[str, object]:
            return {"status": "ok"}

        async def readiness() -> dict[str, object]:
            parts = list(
                await asyncio.gather(
                    check_postgres(engine), check_redis(redis), check_kafka(conn.kafka_bootstrap)
                )
            )
            return {"status": overall(parts), "components": parts}

        ops = OpsServer(
            settings.ops_host, settings.ops_port, liveness=liveness, readiness=readiness
        )
        await ops.start()
        stack.push_async_callback(ops.stop)
        install_stop_handlers(stopped.set)
        log.info("segmenter_started", ops_port=ops.port)
        await stopped.wait()
        log.info("segmenter_stopped")


def cli() -> None:
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    try:
        asyncio.run(main(conn, SegmenterSettings()))
    except SchemaBehindError as exc:
        log.error("schema_behind", error=str(exc))
        sys.exit(3)


if __name__ == "__main__":
    cli()
