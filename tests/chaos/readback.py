"""Kafka for the harness: its topics created up front, and read back whole at the end."""

from __future__ import annotations

import contextlib
import json
import socket

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tests.chaos.expected import ID

PARTITIONS = 4


async def create_topics(bootstrap: str, names: list[str], replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        configs = {"max.message.bytes": "2097152"}
        if replication > 1:
            configs["min.insync.replicas"] = "2"
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(n, PARTITIONS, replication, topic_configs=configs) for n in names]
            )
    finally:
        await admin.close()


async def read_topic(
    bootstrap: str, topic: str
) -> list[tuple[int, int, bytes, list[tuple[str, bytes]]]]:
    """Every record of `topic`, from the beginning to its end now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append((m.partition, m.offset, m.value or b"", list(m.headers or ())))
                if tp in remaining and await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(parts)
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


def customer_of(value: bytes) -> str | None:
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    cid = doc.get("customer_id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) and ID.fullmatch(cid) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
