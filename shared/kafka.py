"""Kafka client factories, topic administration and the dead-letter helper.

Every record the services handle is located as `topic[partition]@offset` in logs and headers.
Every client is made here (or in shared/health.py) with the connection's `KafkaSecurity`:
callers pass `security=conn.kafka_security()` from their ConnectionSettings. The default,
plaintext, is for tests and tools on the local stack.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from shared.security import PLAINTEXT, KafkaSecurity

DLQ_SUFFIX = ".dlq"
HEADER_REASON = "streamseg.dlq.reason"
HEADER_DETAIL = "streamseg.dlq.detail"
HEADER_SOURCE_TOPIC = "streamseg.dlq.source.topic"
HEADER_SOURCE_PARTITION = "streamseg.dlq.source.partition"
HEADER_SOURCE_OFFSET = "streamseg.dlq.source.offset"
# Set on a dead letter that carries a reference to its record instead of the record, which
# was too large for the dead-letter topic; the value then says where to find it.
HEADER_REFERENCE = "streamseg.dlq.reference"
# Kafka's default limit on a record is 1 MiB (message.max.bytes, max.request.size); a dead
# letter above this much is sent as a reference, leaving room for the headers we add.
DEAD_LETTER_MAX_BYTES = 900 * 1024


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create if missing."""

    name: str
    partitions: int = 4
    replication_factor: int = 1


def dlq_topic(topic: str) -> str:
    """Name of the dead-letter topic for `topic`."""
    return topic + DLQ_SUFFIX


def locate(topic: str, partition: int, offset: int) -> str:
    """The canonical way to name a record in logs: `topic[partition]@offset`."""
    return f"{topic}[{partition}]@{offset}"


def make_admin(
    bootstrap: str, *, security: KafkaSecurity = PLAINTEXT, request_timeout_ms: int = 15_000
) -> AIOKafkaAdminClient:
    """An admin client; the caller starts and closes it."""
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=request_timeout_ms,
        **security.client_options(),
    )


async def ensure_topics(
    bootstrap: str, topics: Iterable[TopicSpec], *, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = make_admin(bootstrap, security=security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t.name, t.partitions, t.replication_factor)
            for t in topics
            if t.name not in existing
        ]
        if missing:
            # Another process may create one between our list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def topic_retention_ms(
    bootstrap: str, names: Sequence[str], *, security: KafkaSecurity = PLAINTEXT
) -> dict[str, int]:
    """Each topic's `retention.ms` as the broker applies it (-1: kept forever). Raises
    LookupError naming a topic that does not exist."""
    admin = make_admin(bootstrap, security=security)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None}) for n in names]
        )
    finally:
        await admin.close()
    out: dict[str, int] = {}
    for response in responses:
        for error_code, error_message, _, name, entries in response.resources:
            if error_code:
                raise LookupError(
                    f"cannot read the configuration of topic {name!r}: error {error_code}"
                    f" {error_message or ''}".rstrip()
                )
            for entry in entries:
                if entry[0] == "retention.ms":
                    out[name] = int(entry[1])
    missing = [n for n in names if n not in out]
    if missing:
        raise LookupError(f"no retention.ms reported for topics {missing}")
    return out


async def delete_topics(
    bootstrap: str, names: Sequence[str], *, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Delete topics (tests clean up after themselves)."""
    admin = make_admin(bootstrap, security=security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def make_consumer(
    bootstrap: str,
    *topics: str,
    group_id: str | None,
    security: KafkaSecurity = PLAINTEXT,
    client_id: str = "streamseg",
    max_poll_records: int = 5000,
    fetch_min_bytes: int = 1,
    fetch_max_wait_ms: int = 500,
) -> AIOKafkaConsumer:
    """A consumer whose offsets are never auto-committed: the services keep them elsewhere.

    `fetch_min_bytes` and `fetch_max_wait_ms`: a broker answers a fetch once it has that
    many bytes or that time has passed (Kafka's defaults: 1 byte, 500 ms)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_poll_records,
        fetch_min_bytes=fetch_min_bytes,
        fetch_max_wait_ms=fetch_max_wait_ms,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        request_timeout_ms=30_000,
        **security.client_options(),
    )


def make_producer(
    bootstrap: str,
    *,
    security: KafkaSecurity = PLAINTEXT,
    client_id: str = "streamseg",
    transactional_id: str | None = None,
    linger_ms: int = 5,
) -> AIOKafkaProducer:
    """An idempotent producer: retries never write a record twice. `linger_ms`: how long a
    batch waits for more records before it is sent."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        transactional_id=transactional_id,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
        **security.client_options(),
    )


def dlq_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Headers that say why a record was dead-lettered and where it came from."""
    return [
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail.encode()[:1024]),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
    ]


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """About what a record costs against Kafka's size limits (key, value and headers)."""
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name) + len(data or b"") for name, data in headers)
    )


def dead_letter_reference(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> bytes:
    """The value of a dead letter that stands for a record too large to copy: where the
    record is (while the source topic keeps it), how large it was and its SHA-256."""
    return orjson.dumps(
        {
            "reference": {"topic": topic, "partition": partition, "offset": offset},
            "key_bytes": len(key or b""),
            "value_bytes": len(value or b""),
            "value_sha256": hashlib.sha256(value or b"").hexdigest(),
        }
    )
