"""Traits deciding segments through the real pipeline: profile events through ingest's batch
code, the segmenter reading them through the read model, and a birthday that moves a
customer at midnight, as a time-driven change like any other."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import FixedClock
from shared.events.customers import CustomerTraits, Traits
from shared.segment_cache import SegmentCache
from shared.segmentation import load_definitions
from shared.settings import ConnectionSettings
from tests.integration.test_facts_read_model import apply_through_ingest
from tests.support.segmenter import evaluator, ruleset, scalar, segments

pytestmark = pytest.mark.integration

DEFINITIONS = """
dimensions:
  fit:
    let:
      target: country in [DE, AT] and age >= 25 and age < 35 and interests contains running
    segments:
      runner_25_34: target
      other: not target
"""
BEFORE = datetime(2026, 3, 14, 18, 0, tzinfo=UTC)
BIRTHDAY = datetime(2026, 3, 15, tzinfo=UTC)  # the 25th, at midnight in UTC (the default zone)


def traits(cid: str, at: datetime, **values: Any) -> CustomerTraits:
    return CustomerTraits(
        type="customer_traits",
        event_id=str(uuid.uuid4()),
        customer_id=cid,
        occurred_at=at,
        traits=Traits(**values),
    )


async def test_traits_out_of_order_and_a_birthday_on_time(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings
) -> None:
    rules = await ruleset(engine, definitions=load_definitions(DEFINITIONS))
    clock = FixedClock(BEFORE)
    worker = evaluator(engine, SegmentCache(redis, settings.redis_key_prefix), clock, rules)
    profile = traits(
        "c-1",
        datetime(2026, 3, 1, tzinfo=UTC),
        country="DE",
        birth_date=date(2001, 3, 15),
        interests=("running", "yoga"),
    )
    # An older event for the country arrives later: it must not undo the newer one.
    stale = traits("c-1", datetime(2026, 2, 1, tzinfo=UTC), country="FR")
    await apply_through_ingest(engine, [profile], BEFORE, queue=True)
    await apply_through_ingest(engine, [stale], BEFORE, queue=True)

    assert await worker.evaluate_due() == 1
    assert (await segments(engine))[("c-1", "fit")] == "other"  # 24 until midnight
    next_change = await scalar(
        engine, "SELECT next_change_at FROM customer_evaluations WHERE customer_id = 'c-1'"
    )
    assert next_change == BIRTHDAY

    clock.set(BIRTHDAY)
    assert await worker.evaluate_due() == 1
    assert (await segments(engine))[("c-1", "fit")] == "runner_25_34"
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT cause, reason FROM segment_history"
                    " WHERE customer_id = 'c-1' AND to_segment = 'runner_25_34'"
                )
            )
        ).one()
    assert row.cause == "time"
    assert "age=25" in row.reason
    assert "country=DE" in row.reason

    # A newer country moves the customer out again, through ingest's queue.
    await apply_through_ingest(
        engine,
        [traits("c-1", datetime(2026, 3, 16, tzinfo=UTC), country="FR")],
        BIRTHDAY,
        queue=True,
    )
    clock.set(datetime(2026, 3, 16, 1, tzinfo=UTC))
    assert await worker.evaluate_due() == 1
    assert (await segments(engine))[("c-1", "fit")] == "other"
