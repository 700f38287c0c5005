"""Traits: who a customer is (where they live, their age, interests, consent).

The vocabulary is shared by the profile event contract (shared/events/customers.py), the
stored form (`customer_traits.traits`, one JSON object per customer) and conditions, where
each trait, or a metric derived from one (`age`, `days_since_signup`), is a name.

Stored values are JSON: strings, numbers, booleans, lists of strings, and dates and times
as ISO 8601 text. `decode_traits` turns them into the values the core compares.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

_DAY = timedelta(days=1)
TraitValue = str | int | float | bool | date | datetime | tuple[str, ...] | None


class TraitKind(enum.StrEnum):
    """How a trait's value is typed: in the event contract, in storage, in conditions."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    STRINGS = "strings"  # a list of strings, tested with `contains`
    DATE = "date"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class Trait:
    name: str
    kind: TraitKind
    description: str


BUILT_IN_TRAITS: Mapping[str, Trait] = {
    trait.name: trait
    for trait in (
        Trait("country", TraitKind.STRING, "ISO 3166-1 alpha-2 country code, upper case"),
        Trait("region", TraitKind.STRING, "region or state"),
        Trait("city", TraitKind.STRING, "city"),
        Trait("postal_code", TraitKind.STRING, "postal code"),
        Trait("birth_date", TraitKind.DATE, "date of birth; conditions use `age`"),
        Trait("gender", TraitKind.STRING, "gender, as the shop records it"),
        Trait("signup_channel", TraitKind.STRING, "where the customer signed up (web, app...)"),
        Trait("signup_at", TraitKind.TIME, "when the customer signed up"),
        Trait("interests", TraitKind.STRINGS, "interests or keyword tags"),
        Trait("marketing_consent", TraitKind.BOOLEAN, "consent to marketing messages"),
    )
}


DERIVED_TRAIT_METRICS: frozenset[str] = frozenset({"age", "days_since_signup"})
"""Names conditions derive from a built-in trait: `age` from birth_date, `days_since_signup`
from signup_at."""
RESERVED_TRAIT_NAMES: frozenset[str] = frozenset(BUILT_IN_TRAITS) | DERIVED_TRAIT_METRICS
"""Names a custom trait may not take (the event contract refuses them)."""


def kind_of(raw: Any) -> TraitKind | None:
    """The kind a stored custom value has by its JSON type, None for anything else. A
    string is STRING: a custom trait declared as a date or a time is text that parses as
    one (see `fits`)."""
    if isinstance(raw, bool):
        return TraitKind.BOOLEAN
    if isinstance(raw, int | float):
        return TraitKind.NUMBER
    if isinstance(raw, str):
        return TraitKind.STRING
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return TraitKind.STRINGS
    return None


def fits(kind: TraitKind, raw: Any) -> bool:
    """Whether a stored value can be read as `kind`: a custom trait is typed by the
    definitions that declare it, while events may have sent it with another type."""
    found = kind_of(raw)
    if kind in (TraitKind.DATE, TraitKind.TIME):
        if found is not TraitKind.STRING:
            return False
        try:
            if kind is TraitKind.DATE:
                date.fromisoformat(raw)
                return True
            # A time must say where it is, as every time in the core does.
            return datetime.fromisoformat(raw).tzinfo is not None
        except ValueError:
            return False
    return found is kind


def decode_value(kind: TraitKind, raw: Any) -> TraitValue:
    """A stored JSON value as the core compares it; None for a missing or cleared trait."""
    if raw is None:
        return None
    if kind is TraitKind.DATE:
        return date.fromisoformat(raw)
    if kind is TraitKind.TIME:
        return datetime.fromisoformat(raw)
    if kind is TraitKind.STRINGS:
        return tuple(raw)
    if kind is TraitKind.NUMBER:
        return raw if isinstance(raw, int | float) and not isinstance(raw, bool) else float(raw)
    return raw  # type: ignore[no-any-return]


def decode_traits(
    stored: Mapping[str, Any] | None, custom: Mapping[str, TraitKind] | None = None
) -> dict[str, TraitValue]:
    """`customer_traits.traits` as typed values: built-in traits and the custom traits the
    definitions declare (`custom`: name -> kind). Traits nobody declared are left out, and
    so is a custom value that does not fit its declared kind (a number declared, a string
    sent): it reads as missing, as an unset trait does."""
    if not stored:
        return {}
    out: dict[str, TraitValue] = {}
    for name, raw in stored.items():
        trait = BUILT_IN_TRAITS.get(name)
        if trait is not None:
            kind: TraitKind | None = trait.kind
        else:
            kind = (custom or {}).get(name)
            if kind is not None and not fits(kind, raw):
                continue
        if kind is not None and raw is not None:
            out[name] = decode_value(kind, raw)
    return out


def age_on(birth_date: date, day: date) -> int:
    """Whole years from `birth_date` to `day`; a 29 February birthday counts as 1 March in
    years without one."""
    years = day.year - birth_date.year
    if (day.month, day.day) < _birthday_in(birth_date, day.year):
        years -= 1
    return years


def birthday_in(birth_date: date, year: int) -> date:
    """The day `birth_date`'s birthday falls on in `year` (29 February: 1 March in years
    without one), the day on which `age_on` counts one year more."""
    month, day = _birthday_in(birth_date, year)
    return date(year, month, day)


def _birthday_in(birth_date: date, year: int) -> tuple[int, int]:
    if birth_date.month == 2 and birth_date.day == 29 and not _is_leap(year):
        return (3, 1)
    return (birth_date.month, birth_date.day)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def trait_metrics(
    traits: Mapping[str, TraitValue], now: datetime, zone: tzinfo = UTC
) -> dict[str, Any]:
    """The condition values of `traits` at `now`: each trait as itself, but birth_date as
    `age` (whole years, moving at midnight on the birthday in `zone`) and signup_at as
    `days_since_signup`. A missing trait is null."""
    out: dict[str, Any] = {}
    for name in BUILT_IN_TRAITS:
        if name not in ("birth_date", "signup_at"):
            out[name] = traits.get(name)
    birth = traits.get("birth_date")
    out["age"] = age_on(birth, now.astimezone(zone).date()) if isinstance(birth, date) else None
    signup = traits.get("signup_at")
    # The arithmetic of metrics.days_between, so that next-change times are exact.
    days = (now - signup) / _DAY if isinstance(signup, datetime) else None
    out["days_since_signup"] = None if days is None else days if days > 0.0 else 0.0
    for name, value in traits.items():
        if name not in BUILT_IN_TRAITS:
            out[name] = value
    return out
