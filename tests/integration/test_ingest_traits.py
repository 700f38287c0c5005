"""Customer (traits) events through real Kafka and ingest into PostgreSQL: per trait the
latest event wins whatever the arrival order, replace and unset, dead letters, and the
customer queued for evaluation."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import text

from shared.events import CustomerTraits, Traits
from shared.kafka import HEADER_REASON, HEADER_SOURCE_TOPIC, dlq_topic
from tests.support.ingest import Harness, Produced, produce, read_dead_letters

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
BUILT_IN = {"country", "city", "interests", "marketing_consent"}


def traits_event(
    event_id: str,
    customer_id: str,
    minutes: int,
    *,
    unset: tuple[str, ...] = (),
    replace: bool = False,
    **values: Any,
) -> CustomerTraits:
    return CustomerTraits(
        type="customer_traits",
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=T0 + timedelta(minutes=minutes),
        traits=Traits(
            **{k: v for k, v in values.items() if k in BUILT_IN},
            custom={k: v for k, v in values.items() if k not in BUILT_IN},
        ),
        unset=unset,
        replace=replace,
    )


def records(
    harness: Harness, events: list[CustomerTraits], *, spread: random.Random | None = None
) -> list[tuple[str, bytes | None, bytes]]:
    """Keyed by customer, or with `spread` by a random key, so one customer's events land on
    several partitions and so in any order."""
    return [
        (
            harness.topics.customers,
            (e.customer_id if spread is None else f"k{spread.randrange(100)}").encode(),
            msgspec.json.encode(e),
        )
        for e in events
    ]


async def stored(harness: Harness) -> dict[str, dict[str, Any]]:
    async with harness.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT customer_id, traits::text, trait_times::text, replaced_event_id, version"
                " FROM customer_traits"
            )
        )
        return {
            r[0]: {
                "traits": json.loads(r[1]),
                "times": json.loads(r[2]),
                "replaced": r[3],
                "version": r[4],
            }
            for r in rows
        }


async def run_in_phases(harness: Harness, *phases: list[CustomerTraits]) -> Produced:
    """Each phase produced and ingested before the next: arrival order across batches."""
    harness.worker()
    produced = Produced()
    for events in phases:
        produced = await produce(harness.bootstrap, records(harness, events), produced)
        await harness.wait_caught_up(produced, within_seconds=60)
    return produced


async def test_the_latest_event_wins_per_trait_whatever_arrives_first(harness: Harness) -> None:
    newer = [
        traits_event("a-2", "c-a", 20, country="AT"),
        traits_event("b-2", "c-b", 20, city="Wien"),
        traits_event("u-3", "c-u", 30, unset=("city",)),
        traits_event("r-3", "c-r", 30, replace=True, country="AT"),
        traits_event("r-4", "c-r", 40, tier="silver"),
    ]
    older = [
        traits_event("a-1", "c-a", 10, country="DE", city="Berlin"),
        # One event for two traits: it loses city to a newer event, and still sets country.
        traits_event("b-1", "c-b", 10, country="DE", city="Berlin"),
        traits_event("u-1", "c-u", 10, city="Berlin", tier="gold"),
        traits_event("u-2", "c-u", 20, city="Graz"),
        # Set before the replace, arriving after it: cleared all the same.
        traits_event("r-1", "c-r", 10, city="Berlin", interests=("running",), tier="gold"),
    ]
    await run_in_phases(harness, newer, older)

    rows = await stored(harness)
    assert {cid: row["traits"] for cid, row in rows.items()} == {
        "c-a": {"country": "AT", "city": "Berlin"},
        "c-b": {"country": "DE", "city": "Wien"},
        "c-u": {"tier": "gold"},
        "c-r": {"country": "AT", "tier": "silver"},
    }
    # The unset's tombstone keeps its stamp; the replace stands for what it cleared.
    assert rows["c-u"]["times"]["city"]["event_id"] == "u-3"
    assert rows["c-r"]["replaced"] == "r-3"
    assert set(rows["c-r"]["times"]) == {"country", "tier"}
    # Each customer is one (an aggregates row) and was queued for evaluation by the events.
    async with harness.engine.connect() as conn:
        rows_queued = await conn.execute(text("SELECT customer_id, cause FROM segmentation_queue"))
        queued = {r.customer_id: r.cause for r in rows_queued}
        customers = set(
            (await conn.execute(text("SELECT customer_id FROM customer_aggregates"))).scalars()
        )
    assert queued == dict.fromkeys(rows, "event")
    assert customers == set(rows)


def oracle(events: list[CustomerTraits]) -> dict[str, dict[str, Any]]:
    """Per customer and trait, the value of the latest event naming it (a replace names
    every trait): written from the rule in docs/events.md, not from ingest's code."""
    out: dict[str, dict[str, Any]] = {}
    for cid in {e.customer_id for e in events}:
        mine = [e for e in events if e.customer_id == cid]
        values: dict[str, Any] = {}
        for name in {n for e in mine for n in (*e.unset, *e.stored_values())}:
            touching = [
                e for e in mine if e.replace or name in e.unset or name in e.stored_values()
            ]
            winner = max(touching, key=lambda e: (e.occurred_at, e.event_id))
            if name in winner.stored_values():
                values[name] = winner.stored_values()[name]
        out[cid] = values
    return out


async def test_shuffled_and_duplicated_events_on_many_partitions_match_the_oracle(
    harness: Harness,
) -> None:
    rnd = random.Random(7)
    choices: dict[str, list[Any]] = {
        "country": ["DE", "AT", "CH"],
        "city": ["Berlin", "Wien", "Zug"],
        "interests": [("running",), ("yoga", "running")],
        "marketing_consent": [True, False],
        "tier": ["gold", "silver", 3, ["a", "b"]],
    }
    events = []
    for i in range(400):
        names = rnd.sample(sorted(choices), rnd.randint(1, 3))
        cut = rnd.randint(0, len(names))
        values = {n: rnd.choice(choices[n]) for n in names[:cut]}
        replace = rnd.random() < 0.08
        events.append(
            traits_event(
                f"e-{rnd.randrange(1000):03d}-{i}",
                f"c-{rnd.randrange(25)}",
                rnd.randrange(60),  # few distinct times: ties are common
                unset=tuple(names[cut:]),
                replace=replace or not (values or names[cut:]),
                **values,
            )
        )
    arriving = events + rnd.sample(events, 100)
    rnd.shuffle(arriving)
    harness.worker()
    produced = await produce(harness.bootstrap, records(harness, arriving, spread=rnd))
    assert len({p for _, p in produced.ends}) > 1  # several partitions, so any order
    await harness.wait_caught_up(produced, within_seconds=60)

    assert {cid: row["traits"] for cid, row in (await stored(harness)).items()} == oracle(events)


async def test_poison_customer_records_go_to_the_dead_letter_topic_and_the_rest_applies(
    harness: Harness,
) -> None:
    envelope = {"event_id": "x", "customer_id": "c-1", "occurred_at": T0.isoformat()}
    bad = {
        "undecodable": b"\xff not json",
        "schema_violation": json.dumps(
            {"type": "customer_traits", **envelope, "traits": {"coutnry": "DE"}}
        ).encode(),
        "unknown_event_type": json.dumps({"type": "order_placed", **envelope}).encode(),
        "oversized": b'{"type":"customer_traits","pad":"' + b"x" * 70_000 + b'"}',
        "occurred_at_out_of_range": msgspec.json.encode(
            traits_event("x-late", "c-1", 60 * 24 * 30, city="Later")
        ),
    }
    before = [traits_event("g-1", "c-1", 1, city="Berlin")]
    after = [
        traits_event("g-2", "c-1", 2, country="DE"),
        traits_event("g-3", "c-2", 2, city="Graz"),
    ]
    poison = [(harness.topics.customers, reason.encode(), value) for reason, value in bad.items()]
    # All on one partition (one key), the good events behind the poison ones.
    keyed = [(t, b"c-1", v) for t, _, v in records(harness, before)]
    keyed += [(t, b"c-1", v) for t, _, v in poison]
    keyed += [(t, b"c-1", v) for t, _, v in records(harness, after)]
    harness.worker()
    produced = await produce(harness.bootstrap, keyed)
    await harness.wait_caught_up(produced, within_seconds=60)

    assert {cid: row["traits"] for cid, row in (await stored(harness)).items()} == {
        "c-1": {"city": "Berlin", "country": "DE"},
        "c-2": {"city": "Graz"},
    }
    letters = await read_dead_letters(
        harness.bootstrap, [dlq_topic(harness.topics.customers)], len(bad)
    )
    reasons = sorted(headers[HEADER_REASON].decode() for _, _, headers in letters)
    assert reasons == sorted(bad)
    assert {headers[HEADER_SOURCE_TOPIC].decode() for _, _, headers in letters} == {
        harness.topics.customers
    }
