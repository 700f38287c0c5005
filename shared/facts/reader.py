"""Customer facts at a cost that does not grow with the customer's history.

Ingest writes raw rows (orders, interactions) and, in the same transaction, one
`fact_changes` row per interaction and per order it touched. The read model keeps, per
customer:

- `metric_contributions`: for each event filter in use, what each matching event adds
  (shared/segmentation/events.py `order_contribution`, `interaction_contribution`);
- `customer_metrics`: the running value of every count, sum and distinct count as of the
  last evaluation (`as_of`), and which filters have their contributions.

Reading a customer at `now` folds the pending changes in (each replaces the contribution
its event had before, if any) and moves each running value from `as_of` to `now` by the
contributions that entered (as_of, now] or left (as_of - W, now - W] its window. Every
contribution enters and leaves a window once, so the work per event is constant however
many events the customer has; a window's exits ahead are read from its newest
contributions only, as far as the metric's thresholds need (WindowFacts).

Only the evaluator that holds a customer's lease writes what a read folded (`write_fold`,
in its commit transaction); every other reader computes the same values without writing.
A read runs in one REPEATABLE READ snapshot, so the pending changes it folds and the rows it
initialises a filter from are the same events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg
import orjson

from shared.db.literals import decimal_array, int_array, text_array, timestamp_array
from shared.events import INTERACTION_EVENT_TYPES
from shared.segmentation.events import (
    BUILT_IN_EVENT_METRICS,
    Contribution,
    EventFilter,
    EventMetric,
    EventSource,
    InteractionRow,
    MetricKind,
    OrderRow,
    interaction_contribution,
    order_contribution,
)
from shared.segmentation.facts import CustomerFacts, Measure, WindowFacts
from shared.segmentation.model import Definitions
from shared.segmentation.population import PopulationStats
from shared.segmentation.traits import TraitKind, decode_traits

INTERACTION_TYPES = tuple(sorted(INTERACTION_EVENT_TYPES))
ZERO = Decimal(0)
HEAD_ROWS = 8  # newest contributions read for a windowed sum at first; more when needed


@dataclass(frozen=True, slots=True)
class FactsPlan:
    """What to read: the event metrics by name, and for each windowed metric whose exits
    the next-change search needs, the highest threshold it is compared with."""

    metrics: Mapping[str, EventMetric]
    tops: Mapping[str, Any]
    custom_traits: Mapping[str, TraitKind] = field(default_factory=dict)
    filters: Mapping[str, EventFilter] = field(init=False)
    # Per filter, the head its windowed metrics' next-change search reads: the widest
    # window, and as many rows as the hungriest needs before a read's pending changes.
    heads: Mapping[str, tuple[timedelta, int | None]] = field(init=False)
    with_head: frozenset[str] = field(init=False)  # the metrics that read one
    # Per filter, the fields its distinct counts read: asked for each customer and filter.
    _distinct: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        filters = {m.filter.key: m.filter for m in self.metrics.values()}
        object.__setattr__(self, "filters", filters)
        with_head = frozenset(
            name for name, m in self.metrics.items() if _needs_head(m, self.tops.get(name))
        )
        object.__setattr__(self, "with_head", with_head)
        object.__setattr__(self, "heads", _head_plan(self.metrics, self.tops, with_head))
        distinct = {
            key: tuple(
                sorted(
                    {
                        m.field
                        for m in self.metrics.values()
                        if m.filter.key == key and m.kind is MetricKind.DISTINCT and m.field
                    }
                )
            )
            for key in filters
        }
        object.__setattr__(self, "_distinct", distinct)

    def distinct_fields(self, filter_key: str) -> tuple[str, ...]:
        return self._distinct.get(filter_key, ())


def plan_for(
    definitions: Definitions,
    population: PopulationStats | None = None,
    *,
    heads: bool = True,
    only: Iterable[str] | None = None,
) -> FactsPlan:
    """The plan for evaluating `definitions` with `population`'s cut-offs and score edges;
    without `heads`, for values only (no next-change search: previews, population stats);
    with `only`, for just those metrics (the population job reads what its stats need)."""
    metrics = {**BUILT_IN_EVENT_METRICS, **definitions.event_metrics}
    if only is not None:
        wanted = set(only)
        metrics = {name: m for name, m in metrics.items() if name in wanted}
    tops: dict[str, Any] = {}
    for dependence in definitions.time_dependences if heads else ():
        metric = metrics.get(dependence.metric)
        if (
            metric is None
            or metric.window is None
            or metric.kind
            in (
                MetricKind.FIRST,
                MetricKind.LAST,
            )
        ):
            continue
        thresholds: list[Any] = list(dependence.constants)
        if population is not None:
            thresholds.extend(population.cutoffs.get(c) for c in dependence.cutoffs)
            for score in dependence.scores:
                thresholds.extend(population.edges.get(score, ()))
        else:
            # Unresolved cut-offs and edges: read every event inside the window.
            thresholds.extend(math.inf for _ in (*dependence.cutoffs, *dependence.scores))
        finite = [
            t
            for t in thresholds
            if t is not None and not isinstance(t, bool) and t not in (math.inf, -math.inf)
        ]
        unresolved = len(finite) < len([t for t in thresholds if t is not None])
        tops[dependence.metric] = math.inf if unresolved else max(finite, default=None)
    custom = getattr(definitions, "custom_traits", None) or {}
    return FactsPlan(metrics, tops, custom)


@dataclass
class Fold:
    """What a read folded, for the evaluator to write in its commit transaction."""

    upserts: list[tuple[str, str, str, datetime, Decimal, int, str | None]] = field(
        default_factory=list
    )
    deletes: list[tuple[str, str, str]] = field(default_factory=list)
    states: list[tuple[str, datetime, list[str], str, str]] = field(default_factory=list)
    folded_changes: list[int] = field(default_factory=list)


@dataclass
class FactsRead:
    facts: dict[str, CustomerFacts]
    fold: Fold


_HEAD_SQL = f"""
    SELECT a.customer_id, a.order_count, a.net_spend, a.first_order_at, a.last_order_at,
           a.interaction_count, a.last_interaction_at, a.last_add_to_cart_at,
           {", ".join(f"a.{t}_count" for t in INTERACTION_TYPES)},
           m.as_of, m.filters, m.state::text AS state, m.since::text AS since,
           p.ids, p.order_ids, p.event_ids, p.ats, p.types, p.props, t.traits::text AS traits
    FROM unnest($1::text[]) AS u(customer_id)
    JOIN customer_aggregates a ON a.customer_id = u.customer_id
    LEFT JOIN customer_metrics m ON m.customer_id = u.customer_id
    LEFT JOIN customer_traits t ON t.customer_id = u.customer_id
    LEFT JOIN LATERAL (
        SELECT array_agg(f.id ORDER BY f.id) AS ids,
               array_agg(f.order_id ORDER BY f.id) AS order_ids,
               array_agg(f.event_id ORDER BY f.id) AS event_ids,
               array_agg(f.occurred_at ORDER BY f.id) AS ats,
               array_agg(f.type ORDER BY f.id) AS types,
               array_agg(f.properties::text ORDER BY f.id) AS props
        FROM fact_changes f WHERE f.customer_id = u.customer_id
    ) p ON true
"""  # noqa: S608 - the fixed list of event types
_ORDERS_SQL = """
    SELECT o.customer_id, o.order_id, o.placed_at, o.amount, o.refunded, o.cancelled_at,
           o.channel, o.currency, o.items::text AS items
    FROM unnest($1::text[], $2::text[]) AS u(customer_id, order_id)
    JOIN orders o ON o.customer_id = u.customer_id AND o.order_id = u.order_id
"""
_ALL_ORDERS_SQL = """
    SELECT o.customer_id, o.order_id, o.placed_at, o.amount, o.refunded, o.cancelled_at,
           o.channel, o.currency, o.items::text AS items
    FROM unnest($1::text[]) AS u(customer_id)
    JOIN orders o ON o.customer_id = u.customer_id
"""
_ALL_INTERACTIONS_SQL = """
    SELECT i.customer_id, i.occurred_at, i.type, i.event_id, i.properties::text AS props,
           i.ctid::text AS row_ref
    FROM unnest($1::text[]) AS u(customer_id)
    JOIN interactions i ON i.customer_id = u.customer_id
"""
_CONTRIBUTIONS_SQL = """
    SELECT c.customer_id, c.filter_key, c.ref, c.at, c.amount, c.quantity, c.vals::text AS vals
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u(customer_id, filter_key, ref)
    JOIN metric_contributions c
      ON c.customer_id = u.customer_id AND c.filter_key = u.filter_key AND c.ref = u.ref
"""
# Slices of one customer's contributions under one filter: (lo, hi], newest first (or
# oldest first), at most `k` (NULL: all). The index on (customer_id, filter_key, at) reads
# exactly the rows asked for.
_SLICES_SQL = """
    SELECT r.i, c.ref, c.at, c.amount, c.quantity, c.vals::text AS vals
    FROM unnest($1::text::text[], $2::text::text[], $3::text::timestamptz[],
                $4::text::timestamptz[], $5::text::int[], $6::text::bool[])
         WITH ORDINALITY AS r(customer_id, filter_key, lo, hi, k, newest, i)
    CROSS JOIN LATERAL (
        SELECT * FROM (
            SELECT ref, at, amount, quantity, vals FROM metric_contributions c
            WHERE c.customer_id = r.customer_id AND c.filter_key = r.filter_key
              AND c.at > r.lo AND c.at <= r.hi AND r.newest
            ORDER BY c.at DESC, c.ref DESC LIMIT r.k
        ) d
        UNION ALL
        SELECT * FROM (
            SELECT ref, at, amount, quantity, vals FROM metric_contributions c
            WHERE c.customer_id = r.customer_id AND c.filter_key = r.filter_key
              AND c.at > r.lo AND c.at <= r.hi AND NOT r.newest
            ORDER BY c.at, c.ref LIMIT r.k
        ) a
    ) c
"""
_LOWEST = datetime(1, 1, 2, tzinfo=UTC)  # below any event time


def _order_row(r: Any) -> OrderRow:
    items = orjson.loads(r["items"]) if r["items"] else ()
    return OrderRow(
        r["order_id"],
        r["placed_at"],
        r["amount"],
        r["refunded"],
        r["cancelled_at"],
        r["channel"],
        r["currency"],
        items,
    )


def _contribution(r: Any) -> Contribution:
    vals = orjson.loads(r["vals"]) if r["vals"] else {}
    return Contribution(
        r["at"], r["amount"], int(r["quantity"]), {k: tuple(v) for k, v in vals.items()}
    )


def _vals_json(c: Contribution) -> str | None:
    return orjson.dumps({k: list(v) for k, v in c.values.items()}).decode() if c.values else None


@dataclass(slots=True)
class _Customer:
    """One customer's read in progress."""

    row: Any
    as_of: datetime | None
    initialised: set[str]
    state: dict[str, Any]
    since: dict[str, str]
    pending_ids: list[int]
    pending_orders: list[str]
    pending_interactions: list[tuple[str, InteractionRow]]
    # filter key -> ref -> (old, new) for the initialised filters
    changes: dict[str, dict[str, tuple[Contribution | None, Contribution | None]]] = field(
        default_factory=dict
    )
    # filter key -> every contribution, for filters initialised in this read
    fresh: dict[str, dict[str, Contribution]] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)  # parsed markers of `state`
    unchanged_heads: dict[str, Any] = field(default_factory=dict)  # as stored, still true


class _Slice(NamedTuple):
    """(lo, hi] of one customer's contributions under one filter, newest first or oldest
    first, at most `limit` (None: all). A tuple: thousands are hashed per batch."""

    customer_id: str
    filter_key: str
    lo: datetime
    hi: datetime
    limit: int | None
    newest: bool
    # False: the markers prove no stored contribution lies in it (only pending ones can).
    fetch: bool = True


async def read_facts(
    conn: asyncpg.Connection,
    customer_ids: Sequence[str],
    now: datetime,
    plan: FactsPlan,
    *,
    snapshot: bool = True,
) -> FactsRead:
    """The facts of each customer that has aggregates, at `now`, and what folding them
    changed. With `snapshot` the reads run in their own REPEATABLE READ transaction, unless
    the caller's own transaction holds them (a preview's chunk is REPEATABLE READ)."""
    if not customer_ids:
        return FactsRead({}, Fold())
    if snapshot and not conn.is_in_transaction():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _read(conn, customer_ids, now, plan)
    return await _read(conn, customer_ids, now, plan)


async def _read(
    conn: asyncpg.Connection, customer_ids: Sequence[str], now: datetime, plan: FactsPlan
) -> FactsRead:
    filters = plan.filters
    customers: dict[str, _Customer] = {}
    for r in await conn.fetch(_HEAD_SQL, list(customer_ids)):
        ids = list(r["ids"] or ())
        pending_orders: list[str] = []
        pending_interactions: list[tuple[str, InteractionRow]] = []
        for order_id, event_id, at, type_, props in zip(
            r["order_ids"] or (),
            r["event_ids"] or (),
            r["ats"] or (),
            r["types"] or (),
            r["props"] or (),
            strict=True,
        ):
            if order_id is not None:
                pending_orders.append(order_id)
            else:
                properties = orjson.loads(props) if props else {}
                pending_interactions.append(
                    (f"i:{event_id}", InteractionRow(at, type_, properties))
                )
        has_state = r["as_of"] is not None
        customers[r["customer_id"]] = _Customer(
            row=r,
            as_of=r["as_of"],
            initialised=set(r["filters"] or ()) if has_state else set(),
            state=orjson.loads(r["state"]) if has_state else {},
            since=orjson.loads(r["since"]) if has_state else {},
            pending_ids=ids,
            pending_orders=sorted(set(pending_orders)),
            pending_interactions=pending_interactions,
        )
    await _fold_pending(conn, customers, filters, plan)
    await _initialise(conn, customers, filters, plan, now)
    out: dict[str, CustomerFacts] = {}
    fold = Fold()
    slices, wanted, heads = _slices_wanted(customers, plan, now)
    rows = await _fetch_slices(conn, slices)
    stale: list[tuple[str, str]] = []
    values = _values(customers, plan, now, slices, wanted, rows, stale, heads)
    if stale:
        await _recount(conn, customers, plan, now, values, stale)
    # Heads that ran out before passing their top: read further, rarely more than once.
    values = await _complete_heads(conn, customers, plan, now, values)
    for cid, customer in customers.items():
        events, windows, state = values[cid]
        out[cid] = _facts(customer, now, events, windows, plan)
        _collect_fold(fold, cid, customer, now, state, plan)
        fold.folded_changes.extend(customer.pending_ids)
    return FactsRead(out, fold)


async def _fold_pending(
    conn: asyncpg.Connection,
    customers: dict[str, _Customer],
    filters: Mapping[str, EventFilter],
    plan: FactsPlan,
) -> None:
    """The (old, new) contribution of every pending event under each initialised filter."""
    order_keys = [(cid, o) for cid, c in customers.items() for o in c.pending_orders]
    orders: dict[tuple[str, str], OrderRow] = {}
    olds: dict[tuple[str, str, str], Contribution] = {}
    if order_keys:
        for r in await conn.fetch(
            _ORDERS_SQL, [c for c, _ in order_keys], [o for _, o in order_keys]
        ):
            orders[(r["customer_id"], r["order_id"])] = _order_row(r)
        probes = [
            (cid, key, f"o:{order_id}")
            for cid, order_id in order_keys
            for key in customers[cid].initialised
            if key in filters and filters[key].source is EventSource.ORDERS
        ]
        if probes:
            for r in await conn.fetch(
                _CONTRIBUTIONS_SQL,
                [p[0] for p in probes],
                [p[1] for p in probes],
                [p[2] for p in probes],
            ):
                olds[(r["customer_id"], r["filter_key"], r["ref"])] = _contribution(r)
    for cid, customer in customers.items():
        if not customer.pending_orders and not customer.pending_interactions:
            continue  # nothing to fold: no filter has changes
        for key in customer.initialised:
            event_filter = filters.get(key)
            if event_filter is None:
                continue
            fields = plan.distinct_fields(key)
            found: dict[str, tuple[Contribution | None, Contribution | None]] = {}
            if event_filter.source is EventSource.ORDERS:
                for order_id in customer.pending_orders:
                    ref = f"o:{order_id}"
                    row = orders.get((cid, order_id))
                    new = None if row is None else order_contribution(event_filter, row, fields)
                    old = olds.get((cid, key, ref))
                    if old != new:
                        found[ref] = (old, new)
            else:
                for ref, event in customer.pending_interactions:
                    new = interaction_contribution(event_filter, event, fields)
                    if new is not None:
                        found[ref] = (None, new)
            customer.changes[key] = found


async def _initialise(
    conn: asyncpg.Connection,
    customers: dict[str, _Customer],
    filters: Mapping[str, EventFilter],
    plan: FactsPlan,
    now: datetime,
) -> None:
    """Every contribution of the filters a customer has none of yet, from stored rows."""
    need_orders = [
        cid
        for cid, c in customers.items()
        if any(filters[k].source is EventSource.ORDERS for k in filters.keys() - c.initialised)
    ]
    need_interactions = [
        cid
        for cid, c in customers.items()
        if any(
            filters[k].source is EventSource.INTERACTIONS for k in filters.keys() - c.initialised
        )
    ]
    orders: dict[str, list[OrderRow]] = {}
    if need_orders:
        for r in await conn.fetch(_ALL_ORDERS_SQL, need_orders):
            orders.setdefault(r["customer_id"], []).append(_order_row(r))
    interactions: dict[str, list[tuple[str, InteractionRow]]] = {}
    if need_interactions:
        for r in await conn.fetch(_ALL_INTERACTIONS_SQL, need_interactions):
            ref = f"i:{r['event_id']}" if r["event_id"] else f"i:row:{r['row_ref']}"
            props = orjson.loads(r["props"]) if r["props"] else {}
            interactions.setdefault(r["customer_id"], []).append(
                (ref, InteractionRow(r["occurred_at"], r["type"], props))
            )
    for cid, customer in customers.items():
        for key in filters.keys() - customer.initialised:
            event_filter = filters[key]
            fields = plan.distinct_fields(key)
            found: dict[str, Contribution] = {}
            if event_filter.source is EventSource.ORDERS:
                for row in orders.get(cid, ()):
                    c = order_contribution(event_filter, row, fields)
                    if c is not None:
                        found[f"o:{row.order_id}"] = c
            else:
                kept = interactions.get(cid, [])
                for ref, event in kept:
                    c = interaction_contribution(event_filter, event, fields)
                    if c is not None:
                        found[ref] = c
                if len(kept) < customer.row["interaction_count"]:
                    # Some were pruned (or arrived older than the retention): lifetime
                    # metrics over this filter count from the oldest row kept.
                    oldest = min((event.at for _, event in kept), default=now)
                    customer.since[key] = oldest.isoformat()
            customer.fresh[key] = found


class _Heads(NamedTuple):
    """Which slice is each (customer, filter)'s head, and the heads already known from the
    state (by slice), which are not fetched."""

    slot: dict[tuple[str, str], int]
    known: dict[int, tuple[list[Contribution], bool]]


def _slices_wanted(
    customers: Mapping[str, _Customer], plan: FactsPlan, now: datetime
) -> tuple[list[_Slice], dict[tuple[str, str], dict[str, int]], _Heads]:
    """The slices of stored contributions each customer's metrics need, for each
    (customer, metric) which slice serves which purpose, and the heads."""
    slices: dict[_Slice, int] = {}
    wanted: dict[tuple[str, str], dict[str, int]] = {}

    def want(s: _Slice) -> int:
        if s not in slices:
            slices[s] = len(slices)
        return slices[s]

    heads = _Heads({}, {})
    wanted_heads = _heads_wanted(customers, plan)
    for cid, customer in customers.items():
        quiet = _quiet_filters(customer, plan, now)
        for key in plan.heads:
            if (cid, key) not in wanted_heads:
                continue
            head_width, head_limit = wanted_heads[(cid, key)]
            known = (
                _stored_head(customer, key, head_width, head_limit, now) if key in quiet else None
            )
            head = _Slice(cid, key, now - head_width, now, head_limit, True, known is None)
            heads.slot[(cid, key)] = want(head)
            if known is not None:
                heads.known[heads.slot[(cid, key)]] = known
        for name, metric in plan.metrics.items():
            key = metric.filter.key
            if key not in customer.initialised:
                continue  # initialised in this read: every contribution is at hand
            uses: dict[str, int] = {}
            if key in quiet and _is_quiet(metric, customer, now):
                uses[_QUIET] = -1
                if name in plan.with_head:
                    uses["head"] = heads.slot[(cid, key)]
                wanted[(cid, name)] = uses
                continue
            extra = len(customer.changes.get(key, ()))
            width = metric.window
            low = _LOWEST if width is None else now - width
            if metric.kind is MetricKind.FIRST:
                uses["first"] = want(_Slice(cid, key, _LOWEST, now, 1 + extra, False))
            elif metric.kind is MetricKind.LAST:
                uses["last"] = want(_Slice(cid, key, low, now, 1 + extra, True))
            else:
                as_of = customer.as_of
                has_state = metric.key in customer.state and as_of is not None
                if has_state and as_of is not None:
                    forward = now >= as_of
                    # Stored contributions after as_of: only if one was dated ahead of it.
                    newest = _mark(customer, _NEWEST + key)
                    fetch = not forward or (
                        newest is not _EMPTY and (newest is None or newest > as_of)
                    )
                    lo, hi = sorted((as_of, now))
                    uses["entries"] = want(_Slice(cid, key, lo, hi, None, True, fetch))
                    if width is not None:
                        # Exits: only once the oldest event inside the window leaves it.
                        exit_at = _mark(customer, _EXIT + metric.key)
                        due = not forward or (
                            exit_at is not _EMPTY and (exit_at is None or now >= exit_at)
                        )
                        lo, hi = sorted((as_of - width, now - width))
                        uses["exits"] = want(_Slice(cid, key, lo, hi, None, True, due))
                        if due:
                            # The oldest left inside, for the next read's marker.
                            uses["oldest"] = want(
                                _Slice(cid, key, now - width, now, 1 + extra, False)
                            )
                else:
                    uses["all"] = want(_Slice(cid, key, low, now, None, True))
                if name in plan.with_head:
                    uses["head"] = heads.slot[(cid, key)]
            wanted[(cid, name)] = uses
    return list(slices), wanted, heads


def _stored_head(
    customer: _Customer, key: str, width: timedelta, limit: int | None, now: datetime
) -> tuple[list[Contribution], bool] | None:
    """A quiet filter's head from the one kept at the last read (None: read it): still the
    newest contributions, less those that left the window since; if any did, so did every
    older one, and the head holds all that are inside."""
    raw = customer.state.get(_HEAD + key)
    if raw is None:
        return None
    span, rows, complete = raw
    if span != width // _MICROSECOND or not (
        complete or (limit is not None and len(rows) >= limit)
    ):
        return None
    low = now - width
    kept = [
        Contribution(at, Decimal(amount), quantity, {})
        for at, amount, quantity in ((datetime.fromisoformat(a), m, q) for a, m, q in rows)
        if at > low
    ]
    if len(kept) == len(rows):
        customer.unchanged_heads[key] = raw
    return kept, complete or len(kept) < len(rows)


def _head_to_keep(
    customer: _Customer,
    key: str,
    width: timedelta,
    limit: int | None,
    now: datetime,
    merged: tuple[list[Contribution], bool] | None,
) -> list[Any] | None:
    """The filter's head as the next read can take it from the state: the newest
    contributions inside the window, all of them or a run of the newest with none missing
    between (None: keep none; the next read fetches it)."""
    if key in customer.unchanged_heads:
        return customer.unchanged_heads[key]  # type: ignore[no-any-return]
    if key in customer.fresh:
        low = now - width
        inside = sorted(
            (c for c in customer.fresh[key].values() if low < c.at <= now),
            key=lambda c: c.at,
            reverse=True,
        )
        rows, complete = (inside, True) if limit is None else (inside[:limit], len(inside) <= limit)
    elif merged is not None and (merged[1] or not customer.changes.get(key)):
        # With pending changes folded in, a partial head may miss rows between its own:
        # only a complete one is kept then.
        rows, complete = merged
    else:
        return None
    if len(rows) > HEAD_KEPT:
        return None
    return [
        width // _MICROSECOND,
        [[c.at.isoformat(), str(c.amount), c.quantity] for c in rows],
        complete,
    ]


_QUIET = "quiet"  # a metric whose stored value stands: no slice but the head is read


def _quiet_filters(customer: _Customer, plan: FactsPlan, now: datetime) -> set[str]:
    """The filters whose stored contributions and running values a read moving forward
    cannot change: no pending change, and the newest marker proves no stored contribution
    lies after the last read (most filters of a customer re-evaluated for one event)."""
    as_of = customer.as_of
    if as_of is None or now < as_of:
        return set()
    quiet = set()
    for key in customer.initialised:
        if customer.changes.get(key) or key not in plan.filters:
            continue
        newest = _mark(customer, _NEWEST + key)
        if newest is _EMPTY or (newest is not None and newest <= as_of):
            quiet.add(key)
    return quiet


def _is_quiet(metric: EventMetric, customer: _Customer, now: datetime) -> bool:
    """Whether the metric's stored value holds at `now` for a quiet filter: it has one, and
    no contribution leaves its window by `now`."""
    state = customer.state
    if metric.kind in (MetricKind.FIRST, MetricKind.LAST):
        return _VALUE + metric.key in state
    if metric.key not in state:
        return False
    if metric.window is None:
        return True
    exit_at = _mark(customer, _EXIT + metric.key)
    return exit_at is _EMPTY or (exit_at is not None and now < exit_at)


def _from_quiet(
    metric: EventMetric, customer: _Customer, now: datetime, merged: Any, uses: Mapping[str, int]
) -> tuple[Any, WindowFacts | None, Any]:
    """A quiet metric (`_is_quiet`) from its stored value, as `_from_stored` would find it."""
    state = customer.state
    if metric.kind in (MetricKind.FIRST, MetricKind.LAST):
        at = _mark(customer, _VALUE + metric.key)
        time = None if at is _EMPTY else at
        # The newest inside left the window: so did every older one.
        if time is not None and metric.window is not None and time <= now - metric.window:
            time = None
        return time, None, None
    raw = state[metric.key]
    if metric.kind is MetricKind.DISTINCT:
        counts = {v: [n, datetime.fromisoformat(t)] for v, (n, t) in raw.items()}
        return _distinct_result(metric, counts)
    value: Any = Decimal(raw) if isinstance(_measure_zero(metric), Decimal) else int(raw)
    window = None
    if "head" in uses:
        window = _head_window(metric, now, value, merged)
    return value, window, raw


def _head_window(metric: EventMetric, now: datetime, value: Any, merged: Any) -> WindowFacts:
    assert metric.window is not None
    shared, complete = merged("head")  # the filter's, for its widest window
    low = now - metric.window
    rows = [c for c in shared if c.at > low]
    # Complete for this window too once the shared head reaches past its start.
    complete = complete or len(rows) < len(shared)
    return WindowFacts(value, tuple((c.at, c.measure(metric)) for c in rows), complete)


def _needs_head(metric: EventMetric, top: Any) -> bool:
    return metric.window is not None and metric.kind not in _NO_HEAD and top is not None


_NO_HEAD = frozenset({MetricKind.DISTINCT, MetricKind.FIRST, MetricKind.LAST})


def _head_plan(
    metrics: Mapping[str, EventMetric], tops: Mapping[str, Any], with_head: frozenset[str]
) -> dict[str, tuple[timedelta, int | None]]:
    """One head per filter, for all its windowed metrics: the widest window, as many rows
    as the hungriest needs (a count passes its top with top + 1 events; a sum starts with
    HEAD_ROWS, and reads on in the rare case that is not enough)."""
    heads: dict[str, tuple[timedelta, int | None]] = {}
    for name in with_head:
        metric, top = metrics[name], tops[name]
        assert metric.window is not None
        limit: int | None
        if top == math.inf:
            limit = None
        elif metric.kind is MetricKind.COUNT:
            limit = max(math.floor(top), 0) + 1
        else:
            limit = HEAD_ROWS
        width, most = heads.get(metric.filter.key, (metric.window, limit))
        joined = None if most is None or limit is None else max(most, limit)
        heads[metric.filter.key] = (max(width, metric.window), joined)
    return heads


def _heads_wanted(
    customers: Mapping[str, _Customer], plan: FactsPlan
) -> dict[tuple[str, str], tuple[timedelta, int | None]]:
    """The plan's heads for each customer, deeper by the filter's pending changes (each
    can remove one of the rows read)."""
    heads: dict[tuple[str, str], tuple[timedelta, int | None]] = {}
    for cid, customer in customers.items():
        for key, (width, limit) in plan.heads.items():
            if key in customer.initialised:
                extra = len(customer.changes.get(key, ()))
                heads[(cid, key)] = (width, None if limit is None else limit + extra)
    return heads


async def _fetch_slices(
    conn: asyncpg.Connection, slices: Sequence[_Slice]
) -> list[list[tuple[str, Contribution]]]:
    out: list[list[tuple[str, Contribution]]] = [[] for _ in slices]
    fetched = [i for i, s in enumerate(slices) if s.fetch]
    if not fetched:
        return out
    index = {n + 1: i for n, i in enumerate(fetched)}
    slices = [slices[i] for i in fetched]
    # As array literals, one text parameter each (shared/db/literals.py): asyncpg's own
    # array encoding checks every element against abstract base classes, which cost more
    # than the whole query for a batch's thousands of slices.
    for r in await conn.fetch(
        _SLICES_SQL,
        text_array([s.customer_id for s in slices]),
        text_array([s.filter_key for s in slices]),
        text_array([s.lo.isoformat() for s in slices]),
        text_array([s.hi.isoformat() for s in slices]),
        "{" + ",".join("NULL" if s.limit is None else str(s.limit) for s in slices) + "}",
        "{" + ",".join("t" if s.newest else "f" for s in slices) + "}",
    ):
        out[index[r["i"]]].append((r["ref"], _contribution(r)))
    return out


# Markers kept in customer_metrics.state beside the running values, each a bound that lets
# a read skip a slice it can prove empty: "@n:<filter>" no stored contribution of the filter
# is later (an upper bound), "@x:<metric>" none leaves the metric's window before (a lower
# bound: the oldest inside's time plus the window), "@v:<metric>" a first or last time as
# of the last read, "@h:<filter>" the filter's head (newest contributions inside its widest
# window). "" marks an empty window.
_NEWEST = "@n:"
_EXIT = "@x:"
_VALUE = "@v:"  # a first or last metric's value at the last read ("" for none)
_HEAD = "@h:"  # a filter's head at the last read: [window µs, [[at, amount, qty]...], complete]
HEAD_KEPT = 32  # the most rows of a head kept in the state; a deeper one is read each time
_MICROSECOND = timedelta(microseconds=1)
_EMPTY: Any = object()


def _mark(customer: _Customer, key: str) -> Any:
    """A marker of the customer's stored state as a datetime, _EMPTY, or None when unknown
    (read the slice); each parsed once a read."""
    marks = customer.marks
    if key in marks:
        return marks[key]
    raw = customer.state.get(key)
    mark = None if raw is None else _EMPTY if raw == "" else datetime.fromisoformat(raw)
    marks[key] = mark
    return mark


def _merged(
    customer: _Customer, key: str, stored: Sequence[tuple[str, Contribution]], s: _Slice
) -> list[Contribution]:
    """A slice of the contributions as they are once the pending changes are folded."""
    changes = customer.changes.get(key)
    if not changes:
        return [c for _, c in stored]  # in the slice's order already
    kept = [c for ref, c in stored if ref not in changes]
    kept.extend(new for _, new in changes.values() if new is not None and s.lo < new.at <= s.hi)
    kept.sort(key=lambda c: c.at, reverse=s.newest)
    return kept


_Values = dict[str, tuple[dict[str, Any], dict[str, WindowFacts], dict[str, Any]]]


def _values(
    customers: Mapping[str, _Customer],
    plan: FactsPlan,
    now: datetime,
    slices: Sequence[_Slice],
    wanted: Mapping[tuple[str, str], Mapping[str, int]],
    rows: Sequence[Sequence[tuple[str, Contribution]]],
    stale: list[tuple[str, str]],
    heads: _Heads,
) -> _Values:
    out: _Values = {}
    # Metrics of one filter share slices (the entries since the last read, above all):
    # each is merged once.
    done: dict[int, tuple[list[Contribution], bool]] = dict(heads.known)
    for cid, customer in customers.items():
        events: dict[str, Any] = {}
        windows: dict[str, WindowFacts] = {}
        state: dict[str, Any] = {}
        for name, metric in plan.metrics.items():
            key = metric.filter.key
            merged: Any = None
            uses: Mapping[str, int] = {}
            if key in customer.fresh:
                value, window, kept = _from_all(metric, list(customer.fresh[key].values()), now)
            else:
                uses = wanted[(cid, name)]

                def merged(
                    purpose: str,
                    uses: Mapping[str, int] = uses,
                    key: str = key,
                    customer: _Customer = customer,
                ) -> Any:
                    index = uses[purpose]
                    if index not in done:
                        found = _merged(customer, key, rows[index], slices[index])
                        limit = slices[index].limit
                        # Fewer stored rows than asked for: the slice holds all there are.
                        done[index] = (found, limit is None or len(rows[index]) < limit)
                    return done[index]

                if _QUIET in uses:
                    value, window, kept = _from_quiet(metric, customer, now, merged, uses)
                else:
                    try:
                        value, window, kept = _from_stored(metric, customer, now, merged, uses)
                    except _StaleError:
                        stale.append((cid, name))
                        continue
            events[name] = value
            if window is not None:
                if metric.kind is not MetricKind.DISTINCT:
                    window = _enough(window, plan.tops.get(name))
                windows[name] = window
            if kept is not None:
                state[metric.key] = kept
                if metric.window is not None:
                    state[_EXIT + metric.key] = (
                        customer.state[_EXIT + metric.key]  # nothing entered or left
                        if _QUIET in uses
                        else _exit_marker(metric, customer, now, merged, uses)
                    )
            elif metric.kind in (MetricKind.FIRST, MetricKind.LAST):
                state[_VALUE + metric.key] = _iso(value)
        for key in plan.filters:
            marker = _newest_marker(customer, key)
            if marker is not None:
                state[_NEWEST + key] = marker
        for key, (width, limit) in plan.heads.items():
            slot = heads.slot.get((cid, key))
            merged_head = None if slot is None else done.get(slot)
            kept = _head_to_keep(customer, key, width, limit, now, merged_head)
            if kept is not None:
                state[_HEAD + key] = kept
        out[cid] = (events, windows, state)
    return out


def _iso(at: datetime | None) -> str:
    return "" if at is None else at.isoformat()


def _newest_marker(customer: _Customer, key: str) -> str | None:
    """An upper bound of the filter's stored contribution times once this read's fold is
    written (None: unknown)."""
    if key in customer.fresh:
        return _iso(max((c.at for c in customer.fresh[key].values()), default=None))
    if not customer.changes.get(key):
        return customer.state.get(_NEWEST + key)  # unchanged
    old = _mark(customer, _NEWEST + key)
    if old is None:
        return None
    added = [new.at for _, new in customer.changes.get(key, {}).values() if new is not None]
    if old is not _EMPTY:
        added.append(old)
    return _iso(max(added, default=None))


def _exit_marker(
    metric: EventMetric,
    customer: _Customer,
    now: datetime,
    merged: Any,
    uses: Mapping[str, int],
) -> str:
    """A lower bound of the time the first contribution inside the metric's window at
    `now` leaves it ("" for an empty window)."""
    assert metric.window is not None
    width, low = metric.window, now - metric.window
    key = metric.filter.key
    if merged is None or "all" in uses:  # every contribution inside is at hand
        every = customer.fresh[key].values() if merged is None else merged("all")[0]
        inside = [c.at for c in every if low < c.at <= now]
        return _iso(min(inside) + width if inside else None)
    if "oldest" not in uses:
        # No exit was due: the oldest inside is still inside, unless a pending change or a
        # stored event dated ahead moved in before it.
        old = _mark(customer, _EXIT + metric.key)
        if old is None:
            old = now  # unknown: read the exits next time
        candidates = [] if old is _EMPTY else [old]
        changes = customer.changes.get(key, {}).values()
        candidates.extend(n.at + width for _, n in changes if n is not None and low < n.at <= now)
        if "entries" in uses:
            candidates.extend(c.at + width for c in merged("entries")[0] if low < c.at <= now)
        return _iso(min(candidates, default=None))
    oldest = merged("oldest")[0]
    return _iso(oldest[0].at + width if oldest else None)


def _measure_zero(metric: EventMetric) -> Measure:
    return ZERO if metric.kind is MetricKind.SUM and metric.field == "amount" else 0


def _from_all(
    metric: EventMetric, contributions: list[Contribution], now: datetime
) -> tuple[Any, WindowFacts | None, Any]:
    """A metric from every contribution of its filter (one initialised in this read)."""
    low = None if metric.window is None else now - metric.window
    inside = sorted(
        (c for c in contributions if c.at <= now and (low is None or c.at > low)),
        key=lambda c: c.at,
    )
    if metric.kind is MetricKind.FIRST:
        return (inside[0].at if inside else None), None, None
    if metric.kind is MetricKind.LAST:
        return (inside[-1].at if inside else None), None, None
    if metric.kind is MetricKind.DISTINCT:
        counts = _distinct_counts(metric, inside)
        return _distinct_result(metric, counts)
    total = sum((c.measure(metric) for c in inside), _measure_zero(metric))
    window = None
    if metric.window is not None:
        head = tuple((c.at, c.measure(metric)) for c in reversed(inside))
        window = WindowFacts(total, head, True)
    return total, window, str(total)


def _distinct_counts(metric: EventMetric, inside: Iterable[Contribution]) -> dict[str, list[Any]]:
    counts: dict[str, list[Any]] = {}
    assert metric.field is not None
    for c in inside:
        for value in c.values.get(metric.field, ()):
            entry = counts.setdefault(value, [0, c.at])
            entry[0] += 1
            entry[1] = max(entry[1], c.at)
    return counts


def _distinct_result(
    metric: EventMetric, counts: Mapping[str, list[Any]]
) -> tuple[int, WindowFacts | None, Any]:
    window = None
    if metric.window is not None:
        head = tuple(sorted(((entry[1], 1) for entry in counts.values()), reverse=True))
        window = WindowFacts(len(counts), head, True)
    kept = {value: [n, at.isoformat()] for value, (n, at) in counts.items()}
    return len(counts), window, kept


def _from_stored(
    metric: EventMetric,
    customer: _Customer,
    now: datetime,
    merged: Any,
    uses: Mapping[str, int],
) -> tuple[Any, WindowFacts | None, Any]:
    if metric.kind is MetricKind.FIRST:
        found, _ = merged("first")
        return (found[0].at if found else None), None, None
    if metric.kind is MetricKind.LAST:
        found, _ = merged("last")
        return (found[0].at if found else None), None, None
    if "all" in uses:
        return _from_all(metric, merged("all")[0], now)
    assert customer.as_of is not None
    as_of, width = customer.as_of, metric.window
    changes = customer.changes.get(metric.filter.key, {}).values()

    def in_state(at: datetime) -> bool:
        return at <= as_of and (width is None or at > as_of - width)

    forward = now >= as_of
    entries = merged("entries")[0]
    exits = merged("exits")[0] if width is not None else []
    if metric.kind is MetricKind.DISTINCT:
        return _advance_distinct(metric, customer, now, changes, in_state, forward, entries, exits)
    zero = _measure_zero(metric)
    value: Any = (
        Decimal(customer.state[metric.key])
        if isinstance(zero, Decimal)
        else int(customer.state[metric.key])
    )
    for old, new in changes:
        if old is not None and in_state(old.at):
            value -= old.measure(metric)
        if new is not None and in_state(new.at):
            value += new.measure(metric)
    moved = sum((c.measure(metric) for c in entries), zero) - sum(
        (c.measure(metric) for c in exits), zero
    )
    value = value + moved if forward else value - moved
    window = _head_window(metric, now, value, merged) if "head" in uses else None
    return value, window, str(value)


def _advance_distinct(
    metric: EventMetric,
    customer: _Customer,
    now: datetime,
    changes: Iterable[tuple[Contribution | None, Contribution | None]],
    in_state: Any,
    forward: bool,
    entries: Sequence[Contribution],
    exits: Sequence[Contribution],
) -> tuple[Any, WindowFacts | None, Any]:
    assert metric.field is not None
    counts: dict[str, list[Any]] = {
        value: [n, datetime.fromisoformat(at)]
        for value, (n, at) in customer.state[metric.key].items()
    }
    field_name = metric.field

    def add(c: Contribution, sign: int) -> None:
        for value in c.values.get(field_name, ()):
            entry = counts.setdefault(value, [0, c.at])
            entry[0] += sign
            if sign > 0:
                entry[1] = max(entry[1], c.at)
            if entry[0] <= 0:
                del counts[value]
            elif sign < 0 and entry[1] == c.at:
                # The value's latest event went (a cancellation, say), and others of it
                # stay: when they leave is not known here.
                raise _StaleError(metric.name)

    for old, new in changes:
        if old is not None and in_state(old.at):
            add(old, -1)
        if new is not None and in_state(new.at):
            add(new, +1)
    for c in entries:
        add(c, +1 if forward else -1)
    for c in exits:
        add(c, -1 if forward else +1)
    return _distinct_result(metric, counts)


class _StaleError(Exception):
    """A distinct count's stored state cannot be moved on: read all it counts instead."""


def _enough(window: WindowFacts, top: Any) -> WindowFacts:
    """Trim a head to the newest events whose total passes `top` (the rest never matter)."""
    if top is None or top == math.inf or not window.head:
        return window
    total: Any = 0
    for index, (_, measure) in enumerate(window.head):
        total += measure
        if total > top:
            return WindowFacts(window.value, window.head[: index + 1], False)
    return window


async def _recount(
    conn: asyncpg.Connection,
    customers: Mapping[str, _Customer],
    plan: FactsPlan,
    now: datetime,
    values: _Values,
    stale: Sequence[tuple[str, str]],
) -> None:
    """Distinct counts whose state a removed event left stale, from all they count."""
    wanted = []
    for cid, name in stale:
        metric = plan.metrics[name]
        low = _LOWEST if metric.window is None else now - metric.window
        wanted.append(_Slice(cid, metric.filter.key, low, now, None, True))
    rows = await _fetch_slices(conn, wanted)
    for (cid, name), s, stored in zip(stale, wanted, rows, strict=True):
        metric, customer = plan.metrics[name], customers[cid]
        every = _merged(customer, metric.filter.key, stored, s)
        value, window, kept = _from_all(metric, every, now)
        events, windows, state = values[cid]
        events[name] = value
        if window is not None:
            windows[name] = window
        state[metric.key] = kept
        if metric.window is not None:
            inside = [c.at for c in every]
            state[_EXIT + metric.key] = _iso(min(inside) + metric.window if inside else None)


async def _complete_heads(
    conn: asyncpg.Connection,
    customers: Mapping[str, _Customer],
    plan: FactsPlan,
    now: datetime,
    values: _Values,
) -> _Values:
    """A head read with a limit that did not reach past its top, while the window holds
    more events than it read, is read again in full (rare: a threshold above the total of
    the newest HEAD_ROWS events, with more events than that inside the window)."""
    again: list[tuple[str, str, _Slice]] = []
    for cid, (_, windows, _) in values.items():
        for name, window in windows.items():
            metric = plan.metrics[name]
            if metric.kind is MetricKind.DISTINCT or metric.window is None:
                continue
            top = plan.tops.get(name)
            if top is None or window.complete:
                continue
            total = sum((m for _, m in window.head), _measure_zero(metric))
            if total > top:
                continue
            again.append(
                (cid, name, _Slice(cid, metric.filter.key, now - metric.window, now, None, True))
            )
    if not again:
        return values
    rows = await _fetch_slices(conn, [s for _, _, s in again])
    for (cid, name, s), stored in zip(again, rows, strict=True):
        metric = plan.metrics[name]
        head_rows = _merged(customers[cid], metric.filter.key, stored, s)
        head = tuple((c.at, c.measure(metric)) for c in head_rows)
        windows = values[cid][1]
        windows[name] = WindowFacts(windows[name].value, head, True)
    return values


def _facts(
    customer: _Customer,
    now: datetime,
    events: dict[str, Any],
    windows: dict[str, WindowFacts],
    plan: FactsPlan,
) -> CustomerFacts:
    r = customer.row
    cart = r["last_add_to_cart_at"]
    open_cart = (
        cart
        if cart is not None and (r["last_order_at"] is None or cart > r["last_order_at"])
        else None
    )
    since = {}
    for name, metric in plan.metrics.items():
        mark = customer.since.get(metric.filter.key)
        if mark is not None and metric.window is None:
            since[name] = datetime.fromisoformat(mark)
    traits = decode_traits(_traits_of(r), plan.custom_traits)
    return CustomerFacts(
        customer_id=r["customer_id"],
        order_count=r["order_count"],
        net_spend=r["net_spend"],
        first_order_at=r["first_order_at"],
        last_order_at=r["last_order_at"],
        interaction_count=r["interaction_count"],
        interaction_counts_by_type={t: r[f"{t}_count"] for t in INTERACTION_TYPES},
        last_interaction_at=r["last_interaction_at"],
        last_cart_at=open_cart,
        as_of=now,
        events=events,
        windows=windows,
        traits=traits,
        counted_since=since,
    )


def _traits_of(r: Any) -> Any:
    raw = r["traits"]
    return orjson.loads(raw) if isinstance(raw, str) else raw


def _collect_fold(
    fold: Fold,
    cid: str,
    customer: _Customer,
    now: datetime,
    state: Mapping[str, Any],
    plan: FactsPlan,
) -> None:
    for key, contributions in customer.fresh.items():
        for ref, c in contributions.items():
            fold.upserts.append((cid, key, ref, c.at, c.amount, c.quantity, _vals_json(c)))
    for key, changes in customer.changes.items():
        for ref, (old, new) in changes.items():
            if new is not None:
                fold.upserts.append(
                    (cid, key, ref, new.at, new.amount, new.quantity, _vals_json(new))
                )
            elif old is not None:
                fold.deletes.append((cid, key, ref))
    filters = sorted(customer.initialised | set(customer.fresh))
    fold.states.append(
        (
            cid,
            now,
            filters,
            orjson.dumps(dict(state)).decode(),
            orjson.dumps(customer.since).decode(),
        )
    )


async def write_fold(conn: asyncpg.Connection, fold: Fold) -> None:
    """Write what a read folded, in the caller's transaction (the evaluator's commit)."""
    if fold.deletes:
        await conn.execute(
            """
            DELETE FROM metric_contributions c
            USING unnest($1::text::text[], $2::text::text[], $3::text::text[])
                  AS u(customer_id, filter_key, ref)
            WHERE c.customer_id = u.customer_id AND c.filter_key = u.filter_key
              AND c.ref = u.ref
            """,
            *(text_array(column) for column in _columns(fold.deletes, 3)),
        )
    if fold.upserts:
        await conn.execute(
            """
            INSERT INTO metric_contributions AS c
                (customer_id, filter_key, ref, at, amount, quantity, vals)
            SELECT u.c, u.f, u.r, u.a, u.m, u.q, u.v::jsonb
            FROM unnest($1::text::text[], $2::text::text[], $3::text::text[],
                        $4::text::timestamptz[], $5::text::numeric[], $6::text::bigint[],
                        $7::text::text[]) AS u(c, f, r, a, m, q, v)
            ON CONFLICT (customer_id, filter_key, ref) DO UPDATE SET
                at = EXCLUDED.at, amount = EXCLUDED.amount, quantity = EXCLUDED.quantity,
                vals = EXCLUDED.vals
            """,
            text_array(u[0] for u in fold.upserts),
            text_array(u[1] for u in fold.upserts),
            text_array(u[2] for u in fold.upserts),
            timestamp_array(u[3] for u in fold.upserts),
            decimal_array(u[4] for u in fold.upserts),
            int_array(u[5] for u in fold.upserts),
            text_array(u[6] for u in fold.upserts),
        )
    if fold.states:
        await conn.execute(
            """
            INSERT INTO customer_metrics AS m (customer_id, as_of, filters, state, since)
            SELECT u.c, u.a, ARRAY(SELECT jsonb_array_elements_text(u.f::jsonb)),
                   u.s::jsonb, u.n::jsonb
            FROM unnest($1::text::text[], $2::text::timestamptz[], $3::text::text[],
                        $4::text::text[], $5::text::text[]) AS u(c, a, f, s, n)
            ON CONFLICT (customer_id) DO UPDATE SET
                as_of = EXCLUDED.as_of, filters = EXCLUDED.filters, state = EXCLUDED.state,
                since = EXCLUDED.since
            """,
            text_array(s[0] for s in fold.states),
            timestamp_array(s[1] for s in fold.states),
            text_array(orjson.dumps(s[2]).decode() for s in fold.states),
            text_array(s[3] for s in fold.states),
            text_array(s[4] for s in fold.states),
        )
    if fold.folded_changes:
        await conn.execute(
            "DELETE FROM fact_changes WHERE id = ANY($1::text::bigint[])",
            int_array(fold.folded_changes),
        )


def metric_values(facts: CustomerFacts, names: Iterable[str]) -> dict[str, str | int | None]:
    """The values of event metrics `names` as customer reads show them, from the cache or
    from the database alike: counts as numbers, sums as decimal text, times as RFC 3339."""
    out: dict[str, str | int | None] = {}
    for name in names:
        value = facts.events.get(name)
        if value is None or isinstance(value, int):
            out[name] = value
        elif isinstance(value, datetime):
            out[name] = value.isoformat()
        else:
            out[name] = str(value)
    return out


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


__all__ = [
    "HEAD_ROWS",
    "FactsPlan",
    "FactsRead",
    "Fold",
    "metric_values",
    "plan_for",
    "read_facts",
    "write_fold",
]
