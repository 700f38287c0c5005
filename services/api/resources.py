"""What the app's lifespan holds: built in order at start-up, released in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.auth.audit import AuditWriter
from services.api.auth.service import KeyVerifier
from services.api.customers.cache import CacheReader
from services.api.customers.service import FallbackGate
from services.api.database import Database
from services.api.definitions.parsing import DefinitionsParser
from services.api.events.service import EventIntake
from services.api.publisher import KafkaPublisher
from services.api.redis_pipe import RedisPipe
from services.api.segments.service import DefinitionsCache
from services.api.settings import ApiSettings
from shared.db.engine import create_engine
from shared.db.migrate import require_current
from shared.security import RedisTls
from shared.segment_cache import SegmentCache
from shared.settings import ConnectionSettings


class StreamControl:
    """Tells long-lived responses (the change stream) to finish: set before the server waits
    for open connections, which would otherwise keep a graceful shutdown waiting forever."""

    def __init__(self) -> None:
        self.is_stopping = False

    def stop(self) -> None:
        self.is_stopping = True


@dataclass(frozen=True, slots=True)
class Resources:
    conn: ConnectionSettings
    settings: ApiSettings
    engine: AsyncEngine
    db: Database
    redis: Redis
    cache: CacheReader
    fallback: FallbackGate
    keys: KeyVerifier
    audit: AuditWriter
    definitions: DefinitionsCache
    parser: DefinitionsParser
    streams: StreamControl
    kafka: KafkaPublisher
    intake: EventIntake


# Requests beyond this many in flight wait for a Redis connection (within the cache time-out)
# instead of failing with "too many connections", as the default pool does past 100.
REDIS_CONNECTIONS = 64


def _redis(url: str, tls: RedisTls, timeout_seconds: float) -> Redis:
    """As shared.redis.make_redis, with a pool that makes callers wait rather than fail."""
    pool = BlockingConnectionPool.from_url(
        url,
        **tls.connection_options(url),
        max_connections=REDIS_CONNECTIONS,
        # Longer than any caller waits: the cache time-out ends the wait first.
        timeout=5,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(EqualJitterBackoff(cap=0.2, base=0.01), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


@asynccontextmanager
async def open_resources(
    conn: ConnectionSettings, settings: ApiSettings, streams: StreamControl
) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        engine = create_engine(
            conn.database_url,
            conn.database_schema,
            pool_size=settings.pool_size,
            statement_timeout_ms=settings.database_timeout_ms,
            application_name="api",
            tls=conn.postgres_tls(),
        )
        stack.push_async_callback(engine.dispose)
        await require_current(engine, conn.database_schema)
        db = Database(engine, settings.database_timeout_ms / 1000)
        redis = _redis(conn.redis_url, conn.redis_tls(), settings.cache_timeout_ms / 1000)
        stack.push_async_callback(redis.aclose)
        pipe = RedisPipe.from_url(conn.redis_url, settings.cache_timeout_ms / 1000)
        if pipe is not None:
            stack.callback(pipe.close)
        cache = CacheReader(
            SegmentCache(redis, conn.redis_key_prefix),
            pipe,
            conn.redis_key_prefix,
            settings.cache_timeout_ms / 1000,
            settings.cache_retry_after_ms / 1000,
        )
        audit = AuditWriter(db, settings.audit_flush_interval_ms / 1000, settings.audit_buffer_max)
        audit.start()
        stack.push_async_callback(audit.stop)
        # Connects in the background: the API serves reads while Kafka is away.
        kafka = KafkaPublisher(conn.kafka_bootstrap, security=conn.kafka_security())
        stack.push_async_callback(kafka.stop)
        await kafka.start()
        stack.callback(streams.stop)
        yield Resources(
            conn=conn,
            settings=settings,
            engine=engine,
            db=db,
            redis=redis,
            cache=cache,
            fallback=FallbackGate(settings.pool_size),
            keys=KeyVerifier(db, settings.auth_cache_seconds),
            audit=audit,
            definitions=DefinitionsCache(),
            parser=DefinitionsParser(),
            streams=streams,
            kafka=kafka,
            intake=EventIntake(settings),
        )
