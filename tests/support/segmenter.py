"""Seeding customers through ingest's own SQL, and running the segmenter in tests."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as ingest
from services.segmenter.metrics import SegmenterMetrics
from services.segmenter.worker import Evaluator, Ruleset
from shared.clock import Clock
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.segment_cache import SegmentCache
from shared.segmentation import Definitions, PopulationStats, default_definitions
from shared.segmentation.facts import Interaction


@dataclass
class History:
    """One customer's past, in the shape ingest stores it."""

    customer_id: str
    orders: list[tuple[datetime, Decimal]] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)


async def seed(
    engine: AsyncEngine,
    histories: Sequence[History],
    marked_at: datetime,
    *,
    order_prefix: str = "o",
) -> None:
    """Write the customers' orders and interactions with ingest's repository, and mark them
    for segmentation as ingest does. A second seed of the same customers adds to what they
    have (with another `order_prefix`, else its orders replace the first's)."""
    async with pg_connection(engine) as conn, conn.transaction():
        orders = [
            ingest.OrderChange(h.customer_id, f"{order_prefix}{i}", placed_at=at, amount=amount)
            for h in histories
            for i, (at, amount) in enumerate(h.orders)
        ]
        await ingest.apply_orders(conn, orders)
        rows = [
            (
                h.customer_id,
                i.at,
                i.type,
                f"{order_prefix}-{uuid.uuid4()}",
                orjson.dumps(dict(i.properties)).decode() if i.properties else None,
            )
            for h in histories
            for i in h.interactions
        ]
        # What ingest records for the read model in the same transaction (fact_changes).
        pending: list[Any] = [(r[0], None, r[3], r[1], r[2], r[4]) for r in rows]
        pending.extend((o.customer_id, o.order_id, None, None, None, None) for o in orders)
        await ingest.insert_interactions(conn, rows, pending)
        touches = []
        for h in sorted(histories, key=lambda h: h.customer_id):
            counts: dict[str, int] = {}
            for i in h.interactions:
                counts[i.type] = counts.get(i.type, 0) + 1
            times = [i.at for i in h.interactions]
            carts = [i.at for i in h.interactions if i.type == "add_to_cart"]
            touches.append(
                ingest.CustomerTouch(
                    h.customer_id,
                    counts,
                    max(times, default=None),
                    max(carts, default=None),
                    max(times + [at for at, _ in h.orders], default=marked_at),
                )
            )
        ids = [t.customer_id for t in touches]
        await ingest.touch_customers(conn, touches)
        await ingest.mark_for_segmentation(
            conn, ids, marked_at, [t.last_event_at or marked_at for t in touches]
        )


async def ruleset(
    engine: AsyncEngine,
    population: PopulationStats | None = None,
    definitions: Definitions | None = None,
) -> Ruleset:
    """`definitions` (the default ones if None), stored as the segmenter stores them."""
    defs = definitions or default_definitions()
    async with pg_connection(engine) as conn, conn.transaction():
        stored, _ = await store.seed(conn, defs.source, defs.content_hash, "test")
    return Ruleset(defs, stored.version, population or PopulationStats(), None)


def evaluator(
    engine: AsyncEngine, cache: SegmentCache, clock: Clock, rules: Ruleset, **kwargs: Any
) -> Evaluator:
    from prometheus_client import CollectorRegistry

    return Evaluator(engine, cache, clock, SegmenterMetrics(CollectorRegistry()), rules, **kwargs)


async def segments(engine: AsyncEngine) -> dict[tuple[str, str], str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT customer_id, dimension, segment FROM customer_segments")
        )
        return {(r.customer_id, r.dimension): r.segment for r in rows}


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


def run_segmenter(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m services.segmenter` with `env`, its output going to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.segmenter"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
