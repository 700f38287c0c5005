"""Folding profile events into stored traits: per trait the latest event wins, whatever the
arrival order, checked against an oracle that picks each trait's winner from the events."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.traits import StoredTraits, apply_event, merge_events
from shared.events import CustomerTraits, Traits

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NAMES = ("country", "city", "interests", "tier")


def event(
    event_id: str,
    minutes: int,
    *,
    unset: tuple[str, ...] = (),
    replace: bool = False,
    customer_id: str = "c-1",
    **values: Any,
) -> CustomerTraits:
    custom = {k: v for k, v in values.items() if k == "tier"}
    built_in = {k: v for k, v in values.items() if k != "tier"}
    return CustomerTraits(
        type="customer_traits",
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=T0 + timedelta(minutes=minutes),
        traits=Traits(**built_in, custom=custom),
        unset=unset,
        replace=replace,
    )


def fold(events: list[CustomerTraits]) -> StoredTraits:
    state = StoredTraits()
    for e in events:
        apply_event(state, e)
    return state


def oracle(events: list[CustomerTraits]) -> dict[str, Any]:
    """Each trait's value from the latest event that names it (a replace names them all)."""
    out = {}
    for name in NAMES:
        touching = [e for e in events if e.replace or name in e.unset or name in e.stored_values()]
        if not touching:
            continue
        winner = max(touching, key=lambda e: (e.occurred_at, e.event_id))
        if name in winner.stored_values():
            out[name] = winner.stored_values()[name]
    return out


def test_a_later_event_wins_whichever_arrives_first() -> None:
    old, new = event("e-1", 0, country="DE", city="Berlin"), event("e-2", 5, country="AT")
    for order in ([old, new], [new, old]):
        assert fold(order).values == {"country": "AT", "city": "Berlin"}


def test_an_older_event_for_one_trait_does_not_undo_a_newer_one_for_another() -> None:
    events = [event("e-2", 10, city="Wien"), event("e-1", 0, country="DE", city="Berlin")]
    state = fold(events)
    assert state.values == {"city": "Wien", "country": "DE"}
    assert state.times["city"] == (T0 + timedelta(minutes=10), "e-2")


def test_at_the_same_time_the_larger_event_id_wins() -> None:
    a, b = event("e-a", 0, city="A"), event("e-b", 0, city="B")
    assert fold([a, b]).values == fold([b, a]).values == {"city": "B"}


def test_unset_leaves_a_tombstone_an_older_set_cannot_pass() -> None:
    state = fold([event("e-2", 5, unset=("city",)), event("e-1", 0, city="Berlin")])
    assert state.values == {}
    assert state.times == {"city": (T0 + timedelta(minutes=5), "e-2")}


def test_replace_clears_what_it_does_not_set_even_traits_that_arrive_later() -> None:
    replace = event("e-3", 10, replace=True, country="DE")
    older = event("e-1", 0, city="Berlin", tier="gold")
    newer = event("e-4", 20, tier="silver")
    for order in ([older, replace, newer], [replace, older, newer], [newer, replace, older]):
        state = fold(order)
        assert state.values == {"country": "DE", "tier": "silver"}
        assert state.replaced == (T0 + timedelta(minutes=10), "e-3")
        assert set(state.times) == {"country", "tier"}  # the replace stands for city's


def test_applying_an_event_again_changes_nothing() -> None:
    state = StoredTraits()
    e = event("e-1", 0, country="DE", unset=("city",), replace=True)
    assert apply_event(state, e)
    assert not apply_event(state, e)


def test_merge_returns_only_the_customers_that_changed() -> None:
    stored = {
        "c-1": StoredTraits({"city": "Wien"}, {"city": (T0 + timedelta(hours=1), "e-0")}),
        "c-2": StoredTraits(),
    }
    changed = merge_events(
        stored, [event("e-1", 0, city="Berlin"), event("e-2", 0, customer_id="c-2", city="Graz")]
    )
    assert set(changed) == {"c-2"}
    assert changed["c-2"].values == {"city": "Graz"}


def test_stored_times_read_back_as_they_were() -> None:
    state = fold([event("e-1", 0, country="DE"), event("e-2", 3, unset=("city",))])
    again = StoredTraits.from_row(state.values, state.times_json(), state.replaced)
    assert again == state


_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "country": st.sampled_from(["DE", "AT"]),
    "city": st.sampled_from(["Berlin", "Wien"]),
    "interests": st.lists(st.sampled_from(["run", "swim"]), min_size=1, max_size=3).map(tuple),
    "tier": st.sampled_from(["gold", "silver"]),
}


@st.composite
def events(draw: st.DrawFn) -> list[CustomerTraits]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
        cut = draw(st.integers(0, len(names)))
        values = {name: draw(_VALUES[name]) for name in names[:cut]}
        out.append(
            event(
                f"e-{draw(st.integers(0, 99)):02d}-{i}",
                draw(st.integers(0, 3)),  # few distinct times: ties are common
                unset=tuple(names[cut:]),
                replace=draw(st.booleans()) and draw(st.booleans()),
                **values,
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(events(), st.randoms(use_true_random=False))
def test_any_arrival_order_with_repeats_gives_the_oracles_traits(
    evs: list[CustomerTraits], rnd: random.Random
) -> None:
    expected = fold(evs)
    assert expected.values == oracle(evs)
    shuffled = evs + rnd.sample(evs, k=len(evs) // 2)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == expected
