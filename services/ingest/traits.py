"""Profile events folded into a customer's stored traits: per trait, the latest event wins.

Pure. A customer's row of `customer_traits` is a `StoredTraits`: `values` holds only the
current values (the stored form of shared/segmentation/traits.py), `times` the stamp (event
time, event id) of the event that last set or cleared each trait, a trait cleared by
`unset` keeping its stamp as a tombstone, and `replaced` the stamp of the latest `replace`
event, the tombstone of every trait set before it.

An event changes a trait only if its stamp is later than the trait's and than `replaced`:
a replace clears every trait set before it, including those whose older events are still
to arrive. Stamps order by time, then by event id (the larger wins), and no two events
share one, so the stored state is a function of the set of events: whatever order they
arrive in, and however often one is applied (`tests/unit/test_ingest_traits.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.events.customers import CustomerTraits

Stamp = tuple[datetime, str]


@dataclass(slots=True)
class StoredTraits:
    values: dict[str, Any] = field(default_factory=dict)
    times: dict[str, Stamp] = field(default_factory=dict)
    replaced: Stamp | None = None

    def times_json(self) -> dict[str, dict[str, str]]:
        """`times` as stored in `trait_times`: {name: {"at": ISO time, "event_id": id}}."""
        return {
            name: {"at": at.isoformat(), "event_id": event_id}
            for name, (at, event_id) in sorted(self.times.items())
        }

    @classmethod
    def from_row(
        cls,
        values: Mapping[str, Any],
        times: Mapping[str, Mapping[str, str]],
        replaced: Stamp | None,
    ) -> StoredTraits:
        return cls(
            dict(values),
            {name: (datetime.fromisoformat(t["at"]), t["event_id"]) for name, t in times.items()},
            replaced,
        )


def apply_event(state: StoredTraits, event: CustomerTraits) -> bool:
    """Fold one event into `state`; returns whether anything changed."""
    stamp: Stamp = (event.occurred_at, event.event_id)
    if state.replaced is not None and stamp <= state.replaced:
        return False  # the latest replace came after it: every trait it names is decided
    changed = False
    for name, value in event.stored_values().items():
        if _is_newer(stamp, state.times.get(name)):
            state.values[name] = value
            state.times[name] = stamp
            changed = True
    for name in event.unset:
        if _is_newer(stamp, state.times.get(name)):
            state.values.pop(name, None)
            state.times[name] = stamp
            changed = True
    if event.replace:
        # The replace's stamp is the tombstone of every trait set before it: those go from
        # `times` too, so the state is the same as if the replace had arrived first.
        state.replaced = stamp
        changed = True
        for name, at in list(state.times.items()):
            if at < stamp:
                state.values.pop(name, None)
                del state.times[name]
    return changed


def merge_events(
    stored: Mapping[str, StoredTraits], events: Iterable[CustomerTraits]
) -> dict[str, StoredTraits]:
    """Fold a batch's events into their customers' stored traits (`stored` holds a row for
    each of them); returns the customers whose traits changed, with their new state."""
    changed: dict[str, StoredTraits] = {}
    for event in events:
        state = stored[event.customer_id]
        if apply_event(state, event):
            changed[event.customer_id] = state
    return changed


def _is_newer(stamp: Stamp, than: Stamp | None) -> bool:
    return than is None or stamp > than
