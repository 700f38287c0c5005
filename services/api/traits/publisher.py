"""The API's Kafka producer: customer events to the customers topic, each acknowledged by
every in-sync replica (idempotent, acks=all) before the request is answered.

The API starts and serves reads without Kafka, so the producer connects in the background,
retrying with the shared backoff; until it has, a write fails at once. A write Kafka does
not acknowledge within `timeout_seconds` fails too. Either way the caller is told the
event was not accepted, and retries: if the unacknowledged copy arrives after all, a retry
with the same event id is counted once (the dedup ledger), and with another id it sets
the same values again, which per-trait ordering makes harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.kafka import make_producer
from shared.retry import Backoff, Retry
from shared.security import PLAINTEXT, KafkaSecurity

log = structlog.get_logger("api")

CONNECT_BACKOFF = Backoff(initial_seconds=0.2, maximum_seconds=10.0)


class PublishFailedError(Exception):
    """Kafka did not take the event: nothing was accepted."""

    retriable = True


class TraitsPublisher:
    """`start()` and `stop()` come in a pair; `stop()` is safe to call twice or before."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_seconds: float,
        *,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._security = security
        self._timeout = timeout_seconds
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
            self._connecting = asyncio.create_task(self._connect_loop(), name="traits-connect")
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

    async def publish(self, key: bytes, value: bytes) -> None:
        """Send one record and wait for Kafka's acknowledgement, or raise
        PublishFailedError within `timeout_seconds` saying why."""
        producer = self._producer
        if producer is None:
            raise PublishFailedError(f"not connected to Kafka at {self._bootstrap} yet")
        try:
            # Cancelling `send` while it waits stops the record; once it has returned the
            # record may still go out, which the module docstring accounts for.
            async with asyncio.timeout(self._timeout):
                delivery = await producer.send(self.topic, value=value, key=key)
                await delivery
        except TimeoutError:
            why = (
                f"no metadata for topic {self.topic!r} within {self._timeout:g} s: it does "
                "not exist (ingest creates it when it starts), or Kafka is unreachable"
                if producer.client.cluster.partitions_for_topic(self.topic) is None
                else f"Kafka did not acknowledge within {self._timeout:g} s"
            )
            raise PublishFailedError(why) from None
        except KafkaError as exc:
            raise PublishFailedError(f"{type(exc).__name__}: {exc}") from exc

    async def _connect_loop(self) -> None:
        retry = Retry(CONNECT_BACKOFF, "api-traits-producer", self._stopping)
        client_id = f"api-traits-{socket.gethostname()}:{os.getpid()}"
        while not self._stopping.is_set():
            producer = make_producer(self._bootstrap, security=self._security, client_id=client_id)
            try:
                await producer.start()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not isinstance(exc, Exception):
                    raise  # cancelled by stop()
                # Whatever it was, writes wait for it; reads need no Kafka.
                await retry.pause(exc, topic=self.topic)
                continue
            self._producer = producer
            log.info("traits_producer_connected", topic=self.topic, attempts=retry.failures + 1)
            return
