"""`python -m services.segmenter`: run one segmenter process until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

import structlog

from services.ingest.repository import event_time_watermark
from services.segmenter import definitions, population
from services.segmenter import repository as repo
from services.segmenter.backfill import BackfillFeeder
from services.segmenter.cache import CacheRepairer
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.outbox import OutboxPublisher
from services.segmenter.preview import PreviewRunner
from services.segmenter.settings import SegmenterSettings
from services.segmenter.sizes import SizeHistory, Tier
from services.segmenter.worker import Evaluator, LeasePacer, evaluate_loop
from shared.clock import Clock, EventTimeClock, clock_from_setting
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import SchemaBehindError, require_current
from shared.health import check_kafka, check_postgres, check_redis, overall
from shared.kafka import TopicSpec, ensure_topics
from shared.lifecycle import install_stop_handlers, settle_garbage_collector
from shared.logging import configure_logging
from shared.ops import OpsServer
from shared.redis import make_redis
from shared.retry import Backoff, Retry, repeat_until_stopped
from shared.segment_cache import SegmentCache
from shared.segmentation import DefinitionError, default_definitions
from shared.settings import ConnectionSettings

log = structlog.get_logger("segmenter")


BACKGROUND_BACKOFF = Backoff(0.2, 5.0)


async def backlog_loop(
    engine: Any, clock: Clock, metrics: SegmenterMetrics, stopping: asyncio.Event
) -> None:
    async def step() -> None:
        async with pg_connection(engine) as conn:
            found = await repo.backlog(conn, clock.now())
            metrics.record_backlog(
                found.due,
                found.oldest_due_seconds,
                await repo.outbox_size(conn),
                found.backfill_due,
            )
            metrics.outbox_age.set(await repo.outbox_age_seconds(conn))

    await repeat_until_stopped(step, 2.0, stopping, Retry(BACKGROUND_BACKOFF, "backlog", stopping))


async def read_watermark(engine: Any, clock: EventTimeClock) -> None:
    """Move the clock to ingest's watermark, the latest event time ingested."""
    async with pg_connection(engine) as pg:
        clock.advance_to(await event_time_watermark(pg))


async def event_time_loop(engine: Any, clock: EventTimeClock, stopping: asyncio.Event) -> None:
    """Follow ingest's watermark, so replays and backfills see time move with their events."""
    await repeat_until_stopped(
        lambda: read_watermark(engine, clock),
        0.2,
        stopping,
        Retry(BACKGROUND_BACKOFF, "event_time", stopping),
    )


async def main(conn: ConnectionSettings, settings: SegmenterSettings) -> None:
    stopping = asyncio.Event()
    install_stop_handlers(stopping.set)
    clock = clock_from_setting(settings.clock)
    file_text = (
        settings.definitions_path.read_text()
        if settings.definitions_path is not None
        else default_definitions().source
    )
    async with AsyncExitStack() as stack:
        engine = create_engine(
            conn.database_url,
            conn.database_schema,
            # Each evaluation loop keeps a connection; the other loops share the rest.
            pool_size=settings.evaluators + 4,
            application_name="segmenter",
            # Every loop retries a dropped connection (pg_connection takes it out of the
            # pool), so a ping per checkout buys nothing; it was the largest cost of an
            # idle segmenter, whose loops each check a connection out a few times a second.
            pre_ping=False,
            tls=conn.postgres_tls(),
        )
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        redis = make_redis(conn.redis_url, tls=conn.redis_tls())
        stack.push_async_callback(redis.aclose)
        security = conn.kafka_security()
        await ensure_topics(
            conn.kafka_bootstrap,
            [TopicSpec(settings.changes_topic, settings.topic_partitions)],
            security=security,
        )
        if isinstance(clock, EventTimeClock):
            # Before anything is queued or evaluated at the clock's placeholder start.
            await read_watermark(engine, clock)
        ruleset, start = await definitions.start_ruleset(
            engine, file_text, file_named=settings.definitions_path is not None
        )
        ruleset.population_required = True
        version = ruleset.version
        await population.refresh(engine, ruleset)
        metrics = SegmenterMetrics()
        publisher = OutboxPublisher(
            engine,
            conn.kafka_bootstrap,
            settings.changes_topic,
            metrics,
            security=security,
            batch_size=settings.publish_batch_size,
        )
        cache = SegmentCache(redis, conn.redis_key_prefix)
        repairer = CacheRepairer(
            engine,
            cache,
            interval_seconds=settings.cache_repair_interval_seconds,
            batch_size=settings.batch_size,
        )
        evaluator = Evaluator(
            engine,
            cache,
            clock,
            metrics,
            ruleset,
            batch_size=settings.batch_size,
            on_changes=publisher.wake,
            zone=settings.birthday_zone,
        )
        pacer = LeasePacer(settings.idle_poll_seconds, settings.batch_size)
        jobs: list[Coroutine[Any, Any, None]] = [
            *(evaluate_loop(evaluator, stopping, pacer) for _ in range(settings.evaluators)),
            publisher.run(stopping),
            repairer.run(stopping),
            population.population_loop(engine, ruleset, clock, settings, stopping),
            backlog_loop(engine, clock, metrics, stopping),
            definitions.follow_loop(engine, ruleset, settings.definitions_poll_seconds, stopping),
            BackfillFeeder(
                engine,
                ruleset,
                clock,
                metrics,
                rate_per_second=settings.backfill_rate_per_second,
                live_lag_seconds=settings.backfill_live_lag_seconds,
                on_published=publisher.wake,
            ).run(stopping),
            SizeHistory(
                engine,
                clock,
                metrics,
                tuple(Tier(step, keep) for step, keep in settings.size_tiers),
                fold_interval_seconds=settings.sizes_fold_interval_seconds,
                recount_interval_seconds=settings.sizes_recount_interval_seconds,
            ).run(stopping),
            PreviewRunner(
                engine,
                clock,
                poll_seconds=settings.preview_poll_seconds,
                zone=settings.birthday_zone,
            ).run(stopping),
        ]
        if isinstance(clock, EventTimeClock):
            jobs.append(event_time_loop(engine, clock, stopping))
        settle_garbage_collector()
        tasks = [asyncio.create_task(job) for job in jobs]

        async def liveness() -> dict[str, object]:
            dead = [t.get_name() for t in tasks if t.done()]
            return {"status": "failing" if dead else "ok", "stopped_tasks": dead}

        async def readiness() -> dict[str, object]:
            parts = list(
                await asyncio.gather(
                    check_postgres(engine),
                    check_redis(redis),
                    check_kafka(conn.kafka_bootstrap, security=security),
                )
            )
            age = metrics.oldest_due_seconds
            backlog = {
                "component": "backlog",
                "oldest_due_seconds": round(age, 3),
                "status": "degraded" if age > settings.backlog_degraded_seconds else "ok",
            }
            parts.append(backlog)
            return {
                "status": overall(parts),
                "components": parts,
                "definition_version": ruleset.version,
                "definitions_file_ignored": start.file_ignored,
            }

        ops = OpsServer(
            settings.ops_host, settings.ops_port, liveness=liveness, readiness=readiness
        )
        await ops.start()
        stack.push_async_callback(ops.stop)
        log.info(
            "segmenter_started",
            ops_port=ops.port,
            definition_version=version,
            seeded=start.seeded,
            definitions_file_ignored=start.file_ignored,
        )
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        log.info("segmenter_stopped")


def cli() -> None:
    conn = ConnectionSettings()
    configure_logging(conn.log_level, json=conn.log_json)
    try:
        asyncio.run(main(conn, SegmenterSettings()))
    except SchemaBehindError as exc:
        log.error("schema_behind", error=str(exc))
        sys.exit(3)
    except DefinitionError as exc:
        log.error("definitions_invalid", problems=[str(p) for p in exc.problems])
        sys.exit(2)


if __name__ == "__main__":
    cli()
