"""Cost per new event as one customer's history grows: ingest and evaluation, per metric kind.

    .venv/bin/python -m bench.bench_history_cost [--histories 1,1000,50000] [--events 200]
        [--distinct-events 20] [--sources orders,interactions] [--json out.json]

For each source (orders; interactions) and each set of declared event metrics (none beyond
the defaults; two of each kind: count, sum, distinct count over few values, distinct count
over a value per event, first and last time), one customer per history size H gets H past
events through ingest's own batch code (`build_changes`, then its statements, one
transaction per 5,000 events): orders spread over the last 364 days, interactions over the
last 30 (ingest keeps 31 days of interactions by default). Its first evaluation, which
initialises the read model from the stored rows, is timed on its own. Then `--events` times:
one new event for that customer through ingest's batch code in one transaction (the dedup
ledger, the rows, the aggregates, the queue, as the worker's `_apply` does, less the
offsets), then one batch of the segmenter's `Evaluator`, which leases that customer,
reads its facts (`read_facts`), evaluates and commits (`write_fold` included); for the
distinct counts of a value per event, whose state holds every value seen, `--distinct-events`
times.

Per event it prints the wall time, this process's CPU (`time.process_time`) and the CPU of
the PostgreSQL backend serving each side (from /proc, the stack runs on this machine), and
for each metric set the largest over the smallest across the history sizes. The declared
metrics are built as `EventMetric` values, so that each kind is measured with the defaults
alone beside it, and each windowed count or sum is given a threshold, as a condition
comparing it with a constant would, so that its window's newest events are read for the
next-change search.

Needs the stack (`bash deploy/stack.sh up`); uses its own schema, then drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from bench.bench_ingest import (
    cpu_seconds,
    forget_cache,
    stack_connection,
    stack_engine,
    stack_env,
    stack_redis,
)
from services.ingest import repository as ingest
from services.ingest.batch import build_changes
from services.segmenter.ruleset import Ruleset
from services.segmenter.worker import Evaluator
from shared.clock import SystemClock
from shared.db.engine import pg_connection
from shared.db.literals import text_array
from shared.db.migrate import upgrade
from shared.events.interactions import EmailClick, PageView
from shared.events.orders import LineItem, OrderPlaced
from shared.facts import FactsPlan, plan_for
from shared.segment_cache import SegmentCache
from shared.segmentation import Definitions, PopulationStats
from shared.segmentation.conditions import Compare, IsIn
from shared.segmentation.events import (
    ALL_ORDERS,
    EventFilter,
    EventMetric,
    EventSource,
    MetricKind,
)
from tests.support.segmenter import evaluator, ruleset

RATES = {"EUR": Decimal(1)}
RETENTION = timedelta(days=400)
SEED_CHUNK = 5000
DAY = timedelta(days=1)
CATEGORIES = [f"cat{i}" for i in range(10)]
CAMPAIGNS = [f"cmp{i}" for i in range(10)]

APP = EventFilter(
    EventSource.ORDERS,
    frozenset({"order_placed"}),
    Compare("channel", "=", "app"),
    "channel = 'app'",
)
RUNNING = EventFilter(
    EventSource.ORDERS,
    frozenset({"order_placed"}),
    Compare("item.category", "=", "cat1"),
    "item.category = 'cat1'",
    uses_items=True,
)
CLICKS = EventFilter(EventSource.INTERACTIONS, frozenset({"email_click"}))
CAMPAIGN_CLICKS = EventFilter(
    EventSource.INTERACTIONS,
    frozenset({"email_click"}),
    IsIn("campaign", ("cmp1", "cmp2", "cmp3"), False),
    "campaign in [cmp1, cmp2, cmp3]",
)

# Declared metrics by source and set; a windowed count or sum is compared with the constant
# beside it (its next-change search reads the window's newest events).
MetricSets = dict[str, list[tuple[EventMetric, Any]]]
ORDER_SETS: MetricSets = {
    "defaults": [],
    "count": [
        (EventMetric("app_orders_90d", MetricKind.COUNT, APP, None, 90 * DAY), 5),
        (EventMetric("app_orders", MetricKind.COUNT, APP, None, None), None),
    ],
    "sum": [
        (EventMetric("app_spend_90d", MetricKind.SUM, APP, "amount", 90 * DAY), Decimal(500)),
        (EventMetric("cat1_items_30d", MetricKind.SUM, RUNNING, "quantity", 30 * DAY), 10),
    ],
    "distinct (10 values)": [
        (
            EventMetric(
                "categories_365d", MetricKind.DISTINCT, ALL_ORDERS, "item.category", 365 * DAY
            ),
            None,
        ),
        (EventMetric("categories", MetricKind.DISTINCT, ALL_ORDERS, "item.category", None), None),
    ],
    "distinct (a value per event)": [
        (EventMetric("skus_365d", MetricKind.DISTINCT, ALL_ORDERS, "item.sku", 365 * DAY), None),
        (EventMetric("skus", MetricKind.DISTINCT, ALL_ORDERS, "item.sku", None), None),
    ],
    "first/last": [
        (EventMetric("first_app_order", MetricKind.FIRST, APP, None, None), None),
        (EventMetric("last_app_order_90d", MetricKind.LAST, APP, None, 90 * DAY), None),
    ],
}
INTERACTION_SETS: MetricSets = {
    "defaults": [],
    "count": [
        (EventMetric("campaign_clicks_14d", MetricKind.COUNT, CAMPAIGN_CLICKS, None, 14 * DAY), 3),
        (EventMetric("clicks", MetricKind.COUNT, CLICKS, None, None), None),
    ],
    "distinct (10 values)": [
        (EventMetric("campaigns_30d", MetricKind.DISTINCT, CLICKS, "campaign", 30 * DAY), None),
        (EventMetric("campaigns", MetricKind.DISTINCT, CLICKS, "campaign", None), None),
    ],
    "distinct (a value per event)": [
        (EventMetric("links_30d", MetricKind.DISTINCT, CLICKS, "link", 30 * DAY), None),
        (EventMetric("links", MetricKind.DISTINCT, CLICKS, "link", None), None),
    ],
    "first/last": [
        (EventMetric("first_click", MetricKind.FIRST, CLICKS, None, None), None),
        (EventMetric("last_click_7d", MetricKind.LAST, CLICKS, None, 7 * DAY), None),
    ],
}
# Cut-offs and score edges as a population would give them, so that windows are read only
# as far as the thresholds need (unresolved ones read every event inside the window).
POPULATION = {
    "cutoffs": {"vip_spend": "2000", "high_spend": "800", "medium_spend": "200"},
    "edges": {
        "r_score": ["7", "30", "90", "180"],
        "f_score": ["1", "2", "4", "8"],
        "m_score": ["50", "150", "400", "1000"],
    },
}


def with_metrics(base: Definitions, metrics: list[tuple[EventMetric, Any]]) -> Definitions:
    """`base` with these event metrics declared."""
    return dataclasses.replace(base, event_metrics={m.name: m for m, _ in metrics})


@dataclass
class ThresholdedRuleset(Ruleset):
    """A ruleset whose facts plan also reads the newest events of each declared windowed
    count or sum as far as its constant needs, as a condition comparing them would (no
    condition here reads them)."""

    tops: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def facts_plan(self) -> FactsPlan:
        plan = plan_for(self.definitions, self.population)
        return dataclasses.replace(plan, tops={**plan.tops, **self.tops})


class Events:
    """Events of one source for the benchmark's customers: ids unique in the run."""

    def __init__(self, source: str, rng: random.Random) -> None:
        self.source = source
        self.rng = rng
        self.serial = 0

    def at(self, customer_id: str, at: datetime) -> Any:
        self.serial += 1
        n, rng = self.serial, self.rng
        if self.source == "orders":
            return OrderPlaced(
                event_id=f"e{n}",
                customer_id=customer_id,
                order_id=f"o{n}",
                occurred_at=at,
                amount=Decimal(rng.randint(500, 20000)) / 100,
                currency="EUR",
                channel=rng.choice(["app", "web"]),
                items=(
                    LineItem(
                        sku=f"sku{n}",
                        quantity=rng.randint(1, 3),
                        unit_price=Decimal(rng.randint(100, 9000)) / 100,
                        category=rng.choice(CATEGORIES),
                    ),
                ),
            )
        cls = EmailClick if rng.random() < 0.7 else PageView
        return cls(
            event_id=f"e{n}",
            customer_id=customer_id,
            occurred_at=at,
            properties={"campaign": rng.choice(CAMPAIGNS), "link": f"l{n}"},
        )

    def history(self, customer_id: str, n: int, now: datetime) -> list[Any]:
        span = (364 if self.source == "orders" else 30) * 86400.0
        offsets = sorted((self.rng.uniform(60, span) for _ in range(n)), reverse=True)
        return [self.at(customer_id, now - timedelta(seconds=s)) for s in offsets]


async def ingest_batch(conn: Any, events: list[Any], now: datetime) -> None:
    """What ingest's worker commits for a batch (`_apply`), less the Kafka offsets."""
    changes = build_changes(events, RATES, now - RETENTION)
    ids = sorted(e.event_id for e in events)
    async with conn.transaction():
        await ingest.skip_flush_wait(conn)
        await ingest.keep_new_events(conn, ids, now, expect_new=True, arg=text_array(ids))
        await ingest.insert_interactions(conn, changes.window_rows, changes.pending)
        await ingest.apply_batch(conn, changes.statements)
        await ingest.mark_with_args(conn, changes.queue_args, now)


@dataclass
class Cost:
    """Totals over `n` events of one side (ingest or evaluation)."""

    n: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    pg_cpu_s: float = 0.0

    def per_event_ms(self) -> dict[str, float]:
        n = max(1, self.n)
        return {
            "wall_ms": round(1000 * self.wall_s / n, 3),
            "cpu_ms": round(1000 * self.cpu_s / n, 3),
            "pg_cpu_ms": round(1000 * self.pg_cpu_s / n, 3),
        }


async def timed(cost: Cost, step: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await step()
    cost.wall_s += time.perf_counter() - wall
    cost.cpu_s += time.process_time() - cpu
    cost.n += 1
    return result


async def backend_pid(conn: Any) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def measure(
    ev: Evaluator, ingest_conn: Any, eval_conn: Any, events: Events, cid: str, h: int, n: int
) -> dict[str, Any]:
    now = datetime.now(UTC)
    for first in range(0, h, SEED_CHUNK):
        chunk = events.history(cid, min(SEED_CHUNK, h - first), now)
        await ingest_batch(ingest_conn, chunk, now)
    # Seeded in chunks whose times overlap: the aggregates do not mind, nor the read model.
    ingest_pid, eval_pid = await backend_pid(ingest_conn), await backend_pid(eval_conn)
    first_eval = Cost()
    pg_before = cpu_seconds(eval_pid)
    leased = await timed(first_eval, lambda: ev.evaluate_due(eval_conn))
    first_eval.pg_cpu_s = cpu_seconds(eval_pid) - pg_before
    assert leased == 1, leased
    ingest_cost, eval_cost = Cost(), Cost()
    ingest_pg = eval_pg = 0.0
    for _ in range(n):
        event = events.at(cid, datetime.now(UTC))
        before = cpu_seconds(ingest_pid)
        await timed(
            ingest_cost, functools.partial(ingest_batch, ingest_conn, [event], event.occurred_at)
        )
        ingest_pg += cpu_seconds(ingest_pid) - before
        before = cpu_seconds(eval_pid)
        leased = await timed(eval_cost, lambda: ev.evaluate_due(eval_conn))
        eval_pg += cpu_seconds(eval_pid) - before
        assert leased == 1, leased
    ingest_cost.pg_cpu_s, eval_cost.pg_cpu_s = ingest_pg, eval_pg
    return {
        "history": h,
        "first_evaluation_ms": first_eval.per_event_ms(),
        "ingest_per_event": ingest_cost.per_event_ms(),
        "evaluation_per_event": eval_cost.per_event_ms(),
    }


def ratios(rows: list[dict[str, Any]], side: str) -> dict[str, float | None]:
    """Largest over smallest per figure; None where the smallest is 0 (a backend's CPU
    below one clock tick over the whole run)."""
    out: dict[str, float | None] = {}
    for figure in ("wall_ms", "cpu_ms", "pg_cpu_ms"):
        values = [r[side][figure] for r in rows]
        out[figure] = round(max(values) / min(values), 2) if min(values) > 0 else None
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = stack_env()
    tag = uuid.uuid4().hex[:8]
    schema = f"bench_{tag}"
    engine = stack_engine(env, schema)
    redis = stack_redis(env)
    rng = random.Random(12)
    out: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        await upgrade(engine, schema)
        stored = await ruleset(engine)
        base = stored.definitions
        cache = SegmentCache(redis, f"bench:{tag}:")
        async with pg_connection(engine) as ingest_conn, pg_connection(engine) as eval_conn:
            for source in args.sources:
                sets = ORDER_SETS if source == "orders" else INTERACTION_SETS
                events = Events(source, rng)
                for index, (name, metrics) in enumerate(sets.items()):
                    defs = with_metrics(base, metrics)
                    rules = ThresholdedRuleset(
                        defs,
                        stored.version,
                        PopulationStats.from_dict(defs, POPULATION),
                        None,
                        tops={m.name: top for m, top in metrics if top is not None},
                    )
                    ev = evaluator(engine, cache, SystemClock(), rules)
                    rows = []
                    for h in args.histories:
                        cid = f"{source[0]}{index}-{h}"
                        row = await measure(ev, ingest_conn, eval_conn, events, cid, h, args.events)
                        rows.append(row)
                        print(source, name, orjson.dumps(row).decode(), flush=True)
                    key = f"{source}: {name}"
                    out[key] = {
                        "rows": rows,
                        "ingest_largest_over_smallest": ratios(rows, "ingest_per_event"),
                        "evaluation_largest_over_smallest": ratios(rows, "evaluation_per_event"),
                    }
                    print(
                        key,
                        "ingest",
                        out[key]["ingest_largest_over_smallest"],
                        "evaluation",
                        out[key]["evaluation_largest_over_smallest"],
                        flush=True,
                    )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
        await redis.aclose()
        stack = stack_connection(env)
        await forget_cache(stack.redis_url, f"bench:{tag}:", tls=stack.redis_tls())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="1,1000,50000")
    parser.add_argument("--events", type=int, default=200, help="new events per customer")
    parser.add_argument(
        "--distinct-events",
        type=int,
        default=20,
        help="new events per customer for the distinct counts of a value per event (slow)",
    )
    parser.add_argument("--sources", default="orders,interactions")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.histories = [int(h) for h in args.histories.split(",")]
    args.sources = args.sources.split(",")
    figures = asyncio.run(run(args))
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
