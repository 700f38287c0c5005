"""Preparing a batch: what it keeps when a rebalance lands while it decodes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ingest.batch import YIELD_EVERY_RECORDS, prepare
from shared.events import encode_event
from shared.events.screening import Screen
from shared.workload import Workload

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RATES = {"EUR": Decimal(1), "USD": Decimal("0.9"), "GBP": Decimal("1.15")}
A, B = TopicPartition("interactions", 0), TopicPartition("interactions", 1)


def records(tp: TopicPartition, n: int, seed: int) -> list[ConsumerRecord[bytes, bytes]]:
    work = Workload(seed=seed, customers=50, start=NOW - timedelta(days=3), end=NOW)
    out = []
    for offset, event in enumerate(work.events(n)):
        value = encode_event(event)
        out.append(
            ConsumerRecord(
                tp.topic, tp.partition, offset, 0, 0, None, value, None, 0, len(value), []
            )
        )
    return out


async def test_partition_revoked_while_preparing_is_left_out_whole() -> None:
    n = 2 * YIELD_EVERY_RECORDS
    batch = {A: records(A, n, 1), B: records(B, n, 2)}
    fetched, epochs = {A: 0, B: 0}, {A: 1, B: 1}

    async def revoke_b() -> None:
        # Runs at prepare's first yield, as a rebalance callback would.
        del fetched[B], epochs[B]

    revoking = asyncio.create_task(revoke_b())
    prepared = await prepare(batch, fetched, epochs, Screen(RATES), RATES, NOW, timedelta(days=30))
    await revoking
    assert prepared is not None
    assert [p.tp for p in prepared.parts] == [A]
    assert fetched == {A: n}  # B's position is its next owner's, not ours
    # None of B's events is applied with A's: the ids of each workload carry its seed.
    assert set(prepared.events) == set(prepared.parts[0].event_ids)
    assert all(event_id.startswith("e1-") for event_id in prepared.events)


async def test_partitions_kept_when_nothing_changes() -> None:
    batch = {A: records(A, 10, 1), B: records(B, 10, 2)}
    fetched, epochs = {A: 0, B: 4}, {A: 1, B: 1}
    prepared = await prepare(batch, fetched, epochs, Screen(RATES), RATES, NOW, timedelta(days=30))
    assert prepared is not None
    assert [(p.tp, p.start, p.end) for p in prepared.parts] == [(A, 0, 10), (B, 4, 10)]
    assert fetched == {A: 10, B: 10}
    assert len(prepared.events) == 16  # B's records before offset 4 were already read


async def test_partition_claimed_again_while_preparing_keeps_its_new_position() -> None:
    # B's records follow on from offset 5; at prepare's first yield a rebalance hands B
    # back with an earlier stored offset. Applying them from there would skip 2 to 4.
    n = 2 * YIELD_EVERY_RECORDS
    batch = {A: records(A, n, 1), B: records(B, n, 2)}
    fetched, epochs = {A: 0, B: 5}, {A: 1, B: 1}

    async def claim_b_again() -> None:
        fetched[B], epochs[B] = 2, 2

    claiming = asyncio.create_task(claim_b_again())
    prepared = await prepare(batch, fetched, epochs, Screen(RATES), RATES, NOW, timedelta(days=30))
    await claiming
    assert prepared is not None
    assert [p.tp for p in prepared.parts] == [A]
    assert fetched[B] == 2
