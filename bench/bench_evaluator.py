"""Throughput of one segmenter evaluator alone, without ingest or Kafka beside it.

    .venv/bin/python -m bench.bench_evaluator [--customers 5000] [--sets defaults,declared]
        [--rounds 1] [--profile DIR]

Seeds customers through ingest's own SQL (tests/support/segmenter.py), then times the
first evaluation of all of them (every segment is a change: history, outbox, Redis) and a
second, steady-state one (nothing changed). Prints customers/s, and the time per repository
call and per Redis call (the stale mark before commit, the documents after).

Each set of definitions runs on a schema of its own, seeded alike, one after the other,
`--rounds` times: `defaults` (the shipped definitions), `declared` (the same with the 20
event metrics of DECLARED on top, built as `EventMetric` values and read by no condition;
each windowed count or sum is read as far as a constant needs, as a condition comparing
them would make it) and `full` (the same metrics declared in YAML through the loader, with
10 audiences that read them, the dimensions and traits: FULL_SECTIONS).

With `--profile DIR`, each set's steady phase runs under cProfile timed by process CPU (so
that waiting on PostgreSQL is not counted), written to DIR/<set>-steady.prof.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import functools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

from sqlalchemy import text

import services.segmenter.queue as queue
import services.segmenter.repository as repo
import services.segmenter.worker as worker
from bench.bench_history_cost import POPULATION, ThresholdedRuleset, with_metrics
from bench.bench_ingest import stack_engine, stack_env, stack_redis
from services.ingest import repository as ingest
from services.segmenter.ruleset import Ruleset
from shared.clock import FixedClock
from shared.db.engine import pg_connection
from shared.db.migrate import upgrade
from shared.segment_cache import SegmentCache
from shared.segmentation import Definitions, PopulationStats, load_definitions
from shared.segmentation.conditions import Compare, IsIn
from shared.segmentation.events import (
    ALL_INTERACTIONS,
    ALL_ORDERS,
    EventFilter,
    EventMetric,
    EventSource,
    MetricKind,
)
from shared.segmentation.facts import Interaction
from tests.integration.test_segmenter import NOW, random_histories
from tests.support.segmenter import History, evaluator, ruleset, seed

SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started

    return wrapper


DAY = timedelta(days=1)


def _orders(channel: str | None = None) -> EventFilter:
    if channel is None:
        return ALL_ORDERS
    return EventFilter(
        EventSource.ORDERS,
        frozenset({"order_placed"}),
        Compare("channel", "=", channel),
        f"channel = '{channel}'",
    )


def _interactions(*types: str, where: Any = None, source: str = "") -> EventFilter:
    return EventFilter(EventSource.INTERACTIONS, frozenset(types), where, source)


SALE = IsIn("query", ("sale", "gift"), False)
# 20 event metrics of every kind, over orders (by channel) and interactions (by type and
# properties), windowed and lifetime; with the constant a condition would compare them to.
DECLARED: list[tuple[EventMetric, Any]] = [
    (EventMetric("app_orders_30d", MetricKind.COUNT, _orders("app"), None, 30 * DAY), 2),
    (EventMetric("app_orders_365d", MetricKind.COUNT, _orders("app"), None, 365 * DAY), 5),
    (EventMetric("web_orders_90d", MetricKind.COUNT, _orders("web"), None, 90 * DAY), 3),
    (EventMetric("store_orders", MetricKind.COUNT, _orders("store"), None, None), None),
    (
        EventMetric("app_spend_90d", MetricKind.SUM, _orders("app"), "amount", 90 * DAY),
        Decimal(200),
    ),
    (
        EventMetric("web_spend_365d", MetricKind.SUM, _orders("web"), "amount", 365 * DAY),
        Decimal(500),
    ),
    (EventMetric("store_spend", MetricKind.SUM, _orders("store"), "amount", None), None),
    (EventMetric("currencies_365d", MetricKind.DISTINCT, ALL_ORDERS, "currency", 365 * DAY), None),
    (EventMetric("first_app_order", MetricKind.FIRST, _orders("app"), None, None), None),
    (EventMetric("last_web_order_90d", MetricKind.LAST, _orders("web"), None, 90 * DAY), None),
    (
        EventMetric(
            "views_7d", MetricKind.COUNT, _interactions("page_view", "product_view"), None, 7 * DAY
        ),
        10,
    ),
    (EventMetric("carts_14d", MetricKind.COUNT, _interactions("add_to_cart"), None, 14 * DAY), 2),
    (
        EventMetric(
            "email_clicks_14d", MetricKind.COUNT, _interactions("email_click"), None, 14 * DAY
        ),
        3,
    ),
    (EventMetric("logins_30d", MetricKind.COUNT, _interactions("login"), None, 30 * DAY), 4),
    (
        EventMetric(
            "sale_searches_30d",
            MetricKind.COUNT,
            _interactions("search", where=SALE, source="query in [sale, gift]"),
            None,
            30 * DAY,
        ),
        1,
    ),
    (EventMetric("tickets", MetricKind.COUNT, _interactions("support_ticket"), None, None), None),
    (
        EventMetric(
            "skus_viewed_30d", MetricKind.DISTINCT, _interactions("product_view"), "sku", 30 * DAY
        ),
        None,
    ),
    (EventMetric("types_7d", MetricKind.DISTINCT, ALL_INTERACTIONS, "type", 7 * DAY), None),
    (EventMetric("first_click", MetricKind.FIRST, _interactions("email_click"), None, None), None),
    (EventMetric("last_login_7d", MetricKind.LAST, _interactions("login"), None, 7 * DAY), None),
]
# The same 20 metrics declared in YAML, with trait conditions and 10 audiences that read
# every one of them, the dimensions and the traits, on top of the shipped definitions.
FULL_SECTIONS = """
metrics:
  app_orders_30d: {count: order_placed, where: "channel = 'app'", within: 30d}
  app_orders_365d: {count: order_placed, where: "channel = 'app'", within: 365d}
  web_orders_90d: {count: order_placed, where: "channel = 'web'", within: 90d}
  store_orders: {count: order_placed, where: "channel = 'store'"}
  app_spend_90d: {sum: amount, of: order_placed, where: "channel = 'app'", within: 90d}
  web_spend_365d: {sum: amount, of: order_placed, where: "channel = 'web'", within: 365d}
  store_spend: {sum: amount, of: order_placed, where: "channel = 'store'"}
  currencies_365d: {distinct: currency, of: order_placed, within: 365d}
  first_app_order: {first: order_placed, where: "channel = 'app'"}
  last_web_order_90d: {last: order_placed, where: "channel = 'web'", within: 90d}
  views_7d: {count: [page_view, product_view], within: 7d}
  carts_14d: {count: add_to_cart, within: 14d}
  email_clicks_14d: {count: email_click, within: 14d}
  logins_30d: {count: login, within: 30d}
  sale_searches_30d: {count: search, where: "query in [sale, gift]", within: 30d}
  tickets: {count: support_ticket}
  skus_viewed_30d: {distinct: sku, of: product_view, within: 30d}
  types_7d: {distinct: type, of: interaction, within: 7d}
  first_click: {first: email_click}
  last_login_7d: {last: login, within: 7d}
audiences:
  vip_at_risk: value_tier = vip and lifecycle = at_risk
  app_fans: app_orders_365d >= 3 or app_orders_30d >= 1 or first_app_order < 30
  big_app_spenders: app_spend_90d > 200 and value_tier in [vip, high]
  web_regulars: web_orders_90d >= 2 or web_spend_365d > 500 or last_web_order_90d < 14
  store_goers: store_orders >= 2 or store_spend > 300
  dach: country in [DE, AT, CH] and currencies_365d >= 1
  young_adults: age >= 25 and age < 35
  runners: interests contains running or signup_channel = app and marketing_consent
  browsers: views_7d >= 10 and carts_14d = 0 and skus_viewed_30d >= 3 and types_7d >= 2
  readers: >-
    email_clicks_14d >= 3 or sale_searches_30d >= 1 or logins_30d >= 4 or tickets >= 1
    or first_click < 60 or last_login_7d < 2
"""


def full_definitions() -> Definitions:
    """The shipped definitions with FULL_SECTIONS (the loader's `metrics:`, traits in
    conditions, `audiences:`)."""
    source = resources.files("shared.segmentation").joinpath("definitions/default.yaml")
    return load_definitions(source.read_text(encoding="utf-8") + FULL_SECTIONS)


TYPES = ("page_view", "product_view", "add_to_cart", "search", "email_click", "login")


def with_properties(histories: list[History], seed_: int) -> list[History]:
    """The histories with their interactions spread over more types, with the properties
    the declared metrics read (the same for every set)."""
    rng = random.Random(seed_)
    for h in histories:
        h.interactions = [
            Interaction(
                i.at,
                kind := rng.choice(TYPES),
                {"sku": f"sku-{rng.randrange(500)}"}
                if kind == "product_view"
                else {"query": rng.choice(("shoes", "sale", "gift", "lamp"))}
                if kind == "search"
                else {},
            )
            for i in h.interactions
        ]
    return histories


async def run_set(args: argparse.Namespace, name: str, env: dict[str, str], redis: Any) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = stack_engine(env, schema)
    try:
        await upgrade(engine, schema)
        histories = with_properties(random_histories(args.customers, 1, NOW), 2)
        await seed(engine, histories, NOW)
        async with engine.begin() as conn:
            # Channels and currencies for the declared order metrics to tell apart.
            await conn.execute(
                text(
                    "UPDATE orders SET"
                    " currency = (ARRAY['EUR','USD','GBP'])[1 + abs(hashtext(order_id || 'c'))%3],"
                    " channel = (ARRAY['app','web','store'])[1 + abs(hashtext(order_id)) % 3]"
                )
            )
        rules: Ruleset
        if name == "full":
            defs = full_definitions()
            stored = await ruleset(engine, definitions=defs)
            rules = Ruleset(defs, stored.version, PopulationStats.from_dict(defs, POPULATION), None)
        else:
            stored = await ruleset(engine)
            metrics = DECLARED if name == "declared" else []
            defs = with_metrics(stored.definitions, metrics)
            population = PopulationStats.from_dict(defs, POPULATION)
            rules = ThresholdedRuleset(
                defs,
                stored.version,
                population,
                None,
                tops={m.name: top for m, top in metrics if top is not None},
            )
        ev = evaluator(engine, SegmentCache(redis, f"{schema}:"), FixedClock(NOW), rules)
        for phase in ("first", "steady"):
            if phase == "steady":
                async with pg_connection(engine) as conn, conn.transaction():
                    ids = [h.customer_id for h in histories]
                    await ingest.mark_for_segmentation(conn, ids, NOW, [NOW] * len(ids))
            SPENT.clear()
            profile = (
                cProfile.Profile(time.process_time) if args.profile and phase == "steady" else None
            )
            started, cpu = time.perf_counter(), time.process_time()
            if profile is not None:
                profile.enable()
            while await ev.evaluate_due():
                pass
            if profile is not None:
                profile.disable()
                profile.dump_stats(f"{args.profile}/{name}-{phase}.prof")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            redis_s = {k: SPENT.pop(k, 0.0) for k in ("mark_stale", "put_many")}
            db = sum(SPENT.values())
            calls = sorted(SPENT.items(), key=lambda kv: -kv[1])
            print(
                f"{name:8s} {phase:7s} {args.customers / elapsed:8.0f} customers/s"
                f" ({1000 * cpu / args.customers:.3f} ms CPU each)"
                f"  PostgreSQL {db / elapsed:4.0%} of the time:"
                f" {', '.join(f'{k} {v:.2f}s' for k, v in calls)};"
                f" Redis {', '.join(f'{k} {v:.3f}s' for k, v in redis_s.items())}",
                flush=True,
            )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
        keys = [k async for k in redis.scan_iter(match=f"{schema}:*")]
        if keys:
            await redis.delete(*keys)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--sets", default="defaults,declared")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", metavar="DIR", help="profile each set's steady phase")
    args = parser.parse_args()
    for module, name in (
        (queue, "lease_due"),
        (queue, "settle"),
        (queue, "release_leases"),
        (repo, "load_leased"),
        (repo, "save_state"),
        (repo, "insert_changes"),
        (repo, "schedule"),
        (worker, "read_facts"),
        (worker, "write_fold"),
        (SegmentCache, "mark_stale"),
        (SegmentCache, "put_many"),
    ):
        setattr(module, name, timed(name, getattr(module, name)))
    env = stack_env()
    redis = stack_redis(env)
    try:
        for _ in range(args.rounds):
            for name in args.sets.split(","):
                await run_set(args, name, env, redis)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
