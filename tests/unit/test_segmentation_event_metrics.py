"""Declared event metrics of every kind at their window edges, against an independent
computation from the raw events written here; exact next changes for declared windows, a
windowed last turning null, and birthdays (29 February, zones other than UTC)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.segmentation import (
    Assignment,
    Interaction,
    PopulationStats,
    build_facts,
    compute_fact_metrics,
    evaluate,
    load_definitions,
)
from shared.segmentation.events import OrderRow

BASE = datetime(2026, 6, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
NO_STATS = PopulationStats()

METRICS_YAML = """
metrics:
  clicks_14d:    {count: email_click, within: 14d}
  clicks_36h:    {count: email_click, within: 36h}
  touches_7d:    {count: interaction, within: 7d}
  app_orders_30d: {count: order_placed, where: "channel = 'app'", within: 30d}
  running_90d:   {sum: amount, of: order_placed, where: "item.category = 'running'", within: 90d}
  spend_app_30d: {sum: amount, of: order_placed, where: "channel = 'app'", within: 30d}
  units_30d:     {sum: quantity, of: order_placed, within: 30d}
  skus_30d:      {distinct: item.sku, of: order_placed, within: 30d}
  skus:          {distinct: item.sku, of: order_placed}
  campaigns_14d: {distinct: campaign, of: email_click, within: 14d}
  last_login_30d: {last: login, within: 30d}
  last_order:    {last: order_placed}
  first_click:   {first: email_click}
"""
DIMENSIONS_YAML = """
dimensions:
  clicks:
    segments:
      many: clicks_14d >= 3
      some: clicks_14d >= 1 and clicks_14d < 3
      none: clicks_14d = 0
  burst:
    segments:
      hot: clicks_36h >= 2 or touches_7d > 4
      cold: not (clicks_36h >= 2 or touches_7d > 4)
  runner:
    segments:
      big: running_90d >= 100
      small: running_90d > 0 and running_90d < 100
      none: running_90d = 0
  app:
    segments:
      loyal: app_orders_30d >= 2 and spend_app_30d > 50
      other: not (app_orders_30d >= 2 and spend_app_30d > 50)
  variety:
    segments:
      wide: skus_30d >= 3 or units_30d >= 5 or campaigns_14d >= 2
      narrow: not (skus_30d >= 3 or units_30d >= 5 or campaigns_14d >= 2)
  login:
    segments:
      recent: last_login_30d is not null and last_login_30d < 7
      lapsing: last_login_30d >= 7
      gone: last_login_30d is null
  clicker:
    segments:
      old: first_click >= 60
      young: first_click < 60
      never: first_click is null
"""
DEFINITIONS = load_definitions(METRICS_YAML + DIMENSIONS_YAML)
EVENT_METRICS = list(DEFINITIONS.event_metrics.values())

# ---------------------------------------------------------------- the independent computation
# Written from the documented meaning alone: an event counts while now - window < at <= now.


def _inside(at: datetime, now: datetime, window: timedelta | None) -> bool:
    return at <= now and (window is None or at > now - window)


def _placed(order: OrderRow) -> bool:
    return order.placed_at is not None and order.amount is not None and order.cancelled_at is None


def _days(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max((now - at) / timedelta(days=1), 0.0)


def expected(
    orders: Sequence[OrderRow], interactions: Sequence[Interaction], now: datetime
) -> dict[str, Any]:
    def clicks(window: timedelta | None) -> list[Interaction]:
        return [i for i in interactions if i.type == "email_click" and _inside(i.at, now, window)]

    def kept(window: timedelta | None) -> list[OrderRow]:
        return [o for o in orders if _placed(o) and _inside(o.placed_at, now, window)]  # type: ignore[arg-type]

    d30, d90 = timedelta(days=30), timedelta(days=90)
    app = [o for o in kept(d30) if o.channel == "app"]
    running = Decimal(0)
    for order in kept(d90):
        for item in order.items:
            if item["category"] == "running":
                running += Decimal(str(item["unit_price"])) * item["quantity"]
    logins = [i.at for i in interactions if i.type == "login" and _inside(i.at, now, d30)]
    placed = [o.placed_at for o in kept(None)]
    all_clicks = [i.at for i in clicks(None)]
    return {
        "clicks_14d": len(clicks(timedelta(days=14))),
        "clicks_36h": len(clicks(timedelta(hours=36))),
        "touches_7d": sum(1 for i in interactions if _inside(i.at, now, timedelta(days=7))),
        "app_orders_30d": len(app),
        "running_90d": running,
        "spend_app_30d": sum((max(o.amount - o.refunded, Decimal(0)) for o in app), Decimal(0)),  # type: ignore[operator]
        "units_30d": sum(item["quantity"] for o in kept(d30) for item in o.items),
        "skus_30d": len({item["sku"] for o in kept(d30) for item in o.items}),
        "skus": len({item["sku"] for o in kept(None) for item in o.items}),
        "campaigns_14d": len(
            {
                i.properties["campaign"]
                for i in clicks(timedelta(days=14))
                if i.properties.get("campaign") is not None
            }
        ),
        "last_login_30d": _days(max(logins, default=None), now),
        "last_order": _days(max(placed, default=None), now),  # type: ignore[type-var]
        "first_click": _days(min(all_clicks, default=None), now),
    }


# ---------------------------------------------------------------- histories at the edges

EDGES_US = sorted(
    {
        edge + delta
        for edge in (36 * HOUR_US, 7 * DAY_US, 14 * DAY_US, 30 * DAY_US, 90 * DAY_US)
        for delta in (-1, 0, 1)
    }
)
ages = st.one_of(st.sampled_from(EDGES_US), st.integers(0, 100 * DAY_US), st.integers(-DAY_US, -1))
items = st.lists(
    st.fixed_dictionaries(
        {
            "sku": st.sampled_from(["a", "b", "c", "d"]),
            "category": st.sampled_from(["running", "yoga"]),
            "quantity": st.integers(1, 3),
            "unit_price": st.sampled_from(["9.99", "25", "60.50"]),
        }
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[OrderRow], list[Interaction], datetime]:
    now = BASE + timedelta(microseconds=draw(st.integers(0, DAY_US)))
    orders = []
    for index in range(draw(st.integers(0, 5))):
        lines: list[dict[str, Any]] = draw(items)
        total = sum((Decimal(i["unit_price"]) * i["quantity"] for i in lines), Decimal(0))
        cancelled = draw(st.booleans()) and draw(st.booleans())
        placed = now - timedelta(microseconds=draw(ages))
        orders.append(
            OrderRow(
                f"o{index}",
                placed,
                total,
                draw(st.sampled_from([Decimal(0), Decimal(5), total + 1])),
                placed if cancelled else None,
                draw(st.sampled_from(["app", "web", None])),
                "EUR",
                tuple(lines),
            )
        )
    interactions = [
        Interaction(
            now - timedelta(microseconds=draw(ages)),
            draw(st.sampled_from(["email_click", "login", "page_view"])),
            draw(st.sampled_from([{}, {"campaign": "x"}, {"campaign": "y"}, {"campaign": None}])),
        )
        for _ in range(draw(st.integers(0, 8)))
    ]
    return orders, interactions, now


def metrics_at(
    orders: Sequence[OrderRow], interactions: Sequence[Interaction], as_of: datetime, at: datetime
) -> dict[str, Any]:
    facts = build_facts("c", as_of, orders, interactions, metrics=EVENT_METRICS)
    computed = compute_fact_metrics(facts, at, DEFINITIONS.event_metrics)
    return {name: computed[name] for name in DEFINITIONS.event_metrics}


@settings(max_examples=300, deadline=None)
@given(histories())
def test_every_kind_matches_the_raw_events_at_its_edges(history: Any) -> None:
    orders, interactions, now = history
    assert metrics_at(orders, interactions, now, now) == expected(orders, interactions, now)


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from(EDGES_US) | st.integers(0, 100 * DAY_US))
def test_values_later_without_new_events_match_the_raw_events(history: Any, ahead: int) -> None:
    orders, interactions, now = history
    later = now + timedelta(microseconds=ahead)
    past = [o for o in orders if o.placed_at is None or o.placed_at <= now]
    seen = [i for i in interactions if i.at <= now]
    assert metrics_at(orders, interactions, now, later) == expected(past, seen, later)


def click(age: timedelta, now: datetime = BASE, **properties: Any) -> Interaction:
    return Interaction(now - age, "email_click", properties)


@pytest.mark.parametrize(
    ("age", "inside"),
    [
        (timedelta(days=14) - US, True),
        (timedelta(days=14), False),
        (timedelta(days=14) + US, False),
        (timedelta(0), True),
        (-US, False),  # after now: not yet
    ],
)
def test_a_window_holds_events_strictly_younger_than_it(age: timedelta, inside: bool) -> None:
    values = metrics_at([], [click(age)], BASE, BASE)
    assert values["clicks_14d"] == int(inside)
    assert values["campaigns_14d"] == 0


def test_an_order_line_filter_sums_matching_lines_and_ignores_refunds() -> None:
    lines = (
        {"sku": "a", "category": "running", "quantity": 2, "unit_price": "60"},
        {"sku": "b", "category": "yoga", "quantity": 1, "unit_price": "30"},
    )
    order = OrderRow(
        "o", BASE - timedelta(days=1), Decimal(150), Decimal(100), None, "app", "EUR", lines
    )
    values = metrics_at([order], [], BASE, BASE)
    assert values["running_90d"] == Decimal(120)  # 2 x 60; the refund is not allocated
    assert values["spend_app_30d"] == Decimal(50)  # no line filter: net of the refund
    assert values["units_30d"] == 3
    assert values["skus"] == 2


# ---------------------------------------------------------------- exact next changes


def segments(result: Any) -> dict[str, str]:
    return {name: decision.segment for name, decision in result.assignments.items()}


def assert_exact(
    orders: Sequence[OrderRow],
    interactions: Sequence[Interaction],
    now: datetime,
    zone: tzinfo = UTC,
    definitions: Any = DEFINITIONS,
    traits: Any = None,
) -> datetime | None:
    facts = build_facts(
        "c", now, orders, interactions, metrics=definitions.event_metrics.values(), traits=traits
    )
    first = evaluate(definitions, facts, now, {}, NO_STATS, zone=zone)
    settled = evaluate(definitions, facts, now, first.current, NO_STATS, zone=zone)
    current: dict[str, Assignment] = settled.current
    following = settled.next_change_at
    if following is None:
        far = now + timedelta(days=400 * 365)
        probe = evaluate(definitions, facts, far, current, NO_STATS, zone=zone)
        assert segments(probe) == segments(settled)
        return None
    assert following > now
    before = evaluate(definitions, facts, following - US, current, NO_STATS, zone=zone)
    assert segments(before) == segments(settled), "changed before next_change_at"
    at = evaluate(definitions, facts, following, current, NO_STATS, zone=zone)
    assert segments(at) != segments(settled), "nothing changed at next_change_at"
    span = (following - now) // US
    for step in (1, 3, 7):  # and at a few instants in between, nothing changes either
        moment = now + timedelta(microseconds=span * step // 8)
        if moment > now:
            probe = evaluate(definitions, facts, moment, current, NO_STATS, zone=zone)
            assert segments(probe) == segments(settled)
    return following


@settings(max_examples=200, deadline=None)
@given(histories())
def test_next_change_is_exact_for_declared_windows(history: Any) -> None:
    orders, interactions, now = history
    assert_exact(orders, interactions, now)


def test_the_third_click_leaving_fourteen_days_is_the_next_change() -> None:
    clicks = [click(timedelta(days=days)) for days in (1, 2, 10)]
    following = assert_exact([], clicks, BASE)
    assert following == BASE + timedelta(days=4)  # the 10-day-old click leaves at 14 days


def test_a_windowed_last_turns_null_as_its_event_leaves() -> None:
    login = Interaction(BASE - timedelta(days=8), "login")
    facts = build_facts("c", BASE, (), [login], metrics=EVENT_METRICS)
    result = evaluate(DEFINITIONS, facts, BASE, {}, NO_STATS)
    assert result.assignments["login"].segment == "lapsing"
    assert result.next_change_at == BASE + timedelta(days=22)  # 30 days after the login
    later = evaluate(DEFINITIONS, facts, BASE + timedelta(days=22), result.current, NO_STATS)
    assert later.assignments["login"].segment == "gone"


# ---------------------------------------------------------------- birthdays

AGES = load_definitions(
    """
dimensions:
  age_band:
    segments:
      minor: age < 18
      young: age >= 18 and age < 25
      adult: age >= 25
      unknown: age is null
"""
)
BERLIN = ZoneInfo("Europe/Berlin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14
SANTIAGO = ZoneInfo("America/Santiago")  # on 2022-09-11 its clocks skipped midnight


def local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@pytest.mark.parametrize(
    ("birth", "now", "zone", "expected"),
    [
        (
            date(2001, 7, 15),
            datetime(2026, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2026, 7, 15, tzinfo=UTC),
        ),
        (
            date(2001, 7, 15),
            datetime(2026, 6, 1, tzinfo=UTC),
            BERLIN,
            datetime(2026, 7, 14, 22, tzinfo=UTC),
        ),
        (
            date(2001, 7, 15),
            datetime(2026, 6, 1, tzinfo=UTC),
            LOS_ANGELES,
            datetime(2026, 7, 15, 7, tzinfo=UTC),
        ),
        (
            date(2001, 7, 15),
            datetime(2026, 6, 1, tzinfo=UTC),
            KIRITIMATI,
            datetime(2026, 7, 14, 10, tzinfo=UTC),
        ),
        # 29 February: 1 March in a year without one, 29 February in a leap year.
        (
            date(2000, 2, 29),
            datetime(2024, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2025, 3, 1, tzinfo=UTC),
        ),
        (
            date(2003, 2, 28),
            datetime(2027, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2028, 2, 28, tzinfo=UTC),
        ),
        (
            date(2004, 2, 29),
            datetime(2028, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2029, 3, 1, tzinfo=UTC),
        ),
        (
            date(1996, 2, 29),
            datetime(2020, 6, 1, tzinfo=UTC),
            BERLIN,
            datetime(2021, 2, 28, 23, tzinfo=UTC),
        ),
        (
            date(2008, 2, 29),
            datetime(2025, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2026, 3, 1, tzinfo=UTC),
        ),
        (
            date(2012, 2, 29),
            datetime(2029, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2030, 3, 1, tzinfo=UTC),
        ),
        (
            date(2011, 2, 28),
            datetime(2028, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2029, 2, 28, tzinfo=UTC),
        ),
        (
            date(2006, 2, 28),
            datetime(2023, 6, 1, tzinfo=UTC),
            UTC,
            datetime(2024, 2, 28, tzinfo=UTC),
        ),
        # A birthday whose midnight does not exist: the day begins at 01:00 (-03).
        (
            date(1997, 9, 11),
            datetime(2022, 6, 1, tzinfo=UTC),
            SANTIAGO,
            datetime(2022, 9, 11, 4, tzinfo=UTC),
        ),
    ],
)
def test_age_moves_at_midnight_on_the_birthday_in_the_zone(
    birth: date, now: datetime, zone: tzinfo, expected: datetime
) -> None:
    following = assert_exact([], [], now, zone, AGES, {"birth_date": birth})
    assert following == expected
    assert (following - US).astimezone(zone).date() < following.astimezone(zone).date()


def test_the_default_zone_is_utc_and_a_zone_moves_the_instant() -> None:
    facts = build_facts("c", BASE, traits={"birth_date": date(2008, 6, 2)})
    assert evaluate(AGES, facts, BASE, {}, NO_STATS).next_change_at == datetime(
        2026, 6, 2, tzinfo=UTC
    )
    tokyo = evaluate(AGES, facts, BASE, {}, NO_STATS, zone=ZoneInfo("Asia/Tokyo"))
    assert tokyo.next_change_at == datetime(2026, 6, 1, 15, tzinfo=UTC)
    assert local_midnight(date(2026, 6, 2), ZoneInfo("Asia/Tokyo")) == tokyo.next_change_at


@settings(max_examples=200, deadline=None)
@given(
    st.dates(date(1930, 1, 1), date(2025, 12, 31)),
    st.integers(0, 366 * DAY_US),
    st.sampled_from([UTC, BERLIN, LOS_ANGELES, KIRITIMATI, SANTIAGO]),
)
def test_next_change_is_exact_for_any_birthday(birth: date, ahead: int, zone: tzinfo) -> None:
    now = BASE + timedelta(microseconds=ahead)
    following = assert_exact([], [], now, zone, AGES, {"birth_date": birth})
    if following is not None:
        local = following.astimezone(zone).date()
        assert (local.month, local.day) in {(birth.month, birth.day), (3, 1)}
