"""The API's Kafka producer: records each acknowledged by every in-sync replica (idempotent,
acks=all) before the request is answered. Traits writes and `POST /v1/events` share it.

The API starts and serves reads without Kafka, so the producer connects in the background,
retrying with the shared backoff; until it has, a write fails at once. A write Kafka does
not acknowledge within its time-out fails too, and so does a batch of which any one record
was not acknowledged. Either way the caller is told nothing was accepted, and retries: the
records that did reach Kafka (some of a batch, or one acknowledged after the time-out) are
counted once when the retry carries the same event ids, since ingest deduplicates by event
id (and a traits event with another id sets the same values again, which per-trait
ordering makes harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.kafka import make_producer
from shared.retry import Backoff, Retry
from shared.security import PLAINTEXT, KafkaSecurity

log = structlog.get_logger("api")

CONNECT_BACKOFF = Backoff(initial_seconds=0.2, maximum_seconds=10.0)
# A request hands all its records over before it waits for any (sending yields to the event
# loop only when a batch is full), so they are batched without lingering, and a linger
# would only add its time to every answer (bench/bench_intake.py, docs/performance.md).
LINGER_MS = 0
# (topic, key, value)
Record = tuple[str, bytes, bytes]


class PublishFailedError(Exception):
    """Kafka did not take every record: the write was not accepted."""

    retriable = True


class KafkaPublisher:
    """`start()` and `stop()` come in a pair; `stop()` is safe to call twice or before."""

    def __init__(self, bootstrap: str, *, security: KafkaSecurity = PLAINTEXT) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self._producer is not None

    async def start(self, wait_seconds: float = 2.0) -> None:
        """Start connecting, and wait up to `wait_seconds` for it, so that writes work from
        the first request whenever Kafka is there; past that, connecting goes on behind."""
        if self._connecting is None and not self._stopping.is_set():
            self._connecting = asyncio.create_task(self._connect_loop(), name="kafka-connect")
            await asyncio.wait({self._connecting}, timeout=wait_seconds)

    async def stop(self) -> None:
        """Stop connecting, then flush and close the producer."""
        self._stopping.set()
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, records: Sequence[Record], timeout_seconds: float) -> None:
        """Send the records and wait until Kafka has acknowledged every one, or raise
        PublishFailedError within `timeout_seconds` saying why."""
        if not records:
            return
        producer = self._producer
        if producer is None:
            raise PublishFailedError(f"not connected to Kafka at {self._bootstrap} yet")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        deliveries: list[asyncio.Future[object]] = []
        try:
            # Cancelling `send` while it waits (for metadata, or room in the buffer) stops
            # its record; the records already handed over may still go out, which the
            # module docstring accounts for.
            async with asyncio.timeout_at(deadline):
                for topic, key, value in records:
                    deliveries.append(await producer.send(topic, value=value, key=key))
            # Waited for, not cancelled: a late acknowledgement still settles the future.
            _, pending = await asyncio.wait(deliveries, timeout=max(0.0, deadline - loop.time()))
            if pending:
                raise PublishFailedError(self._late(producer, records, timeout_seconds))
            errors = [d.exception() for d in deliveries]
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                raise PublishFailedError(f"{type(failed).__name__}: {failed}") from failed
        except TimeoutError:
            raise PublishFailedError(self._late(producer, records, timeout_seconds)) from None
        except KafkaError as exc:
            raise PublishFailedError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for delivery in deliveries:
                if not delivery.done():
                    delivery.add_done_callback(_settled)

    @staticmethod
    def _late(producer: AIOKafkaProducer, records: Sequence[Record], timeout: float) -> str:
        topics = sorted({topic for topic, _, _ in records})
        unknown = [t for t in topics if producer.client.cluster.partitions_for_topic(t) is None]
        if unknown:
            return (
                f"no metadata for topic {unknown[0]!r} within {timeout:g} s: it does not "
                "exist (ingest creates it when it starts), or Kafka is unreachable"
            )
        return f"Kafka did not acknowledge within {timeout:g} s"

    async def _connect_loop(self) -> None:
        retry = Retry(CONNECT_BACKOFF, "api-producer", self._stopping)
        client_id = f"api-{socket.gethostname()}:{os.getpid()}"
        while not self._stopping.is_set():
            producer = make_producer(
                self._bootstrap, security=self._security, client_id=client_id, linger_ms=LINGER_MS
            )
            try:
                await producer.start()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not isinstance(exc, Exception):
                    raise  # cancelled by stop()
                # Whatever it was, writes wait for it; reads need no Kafka.
                await retry.pause(exc, bootstrap=self._bootstrap)
                continue
            self._producer = producer
            log.info("producer_connected", bootstrap=self._bootstrap, attempts=retry.failures + 1)
            return


def _settled(delivery: asyncio.Future[object]) -> None:
    """Retrieve the outcome of a record the request stopped waiting for, so that a late
    failure is not reported as an exception nobody retrieved."""
    if not delivery.cancelled():
        delivery.exception()
