"""Profile events: who a customer is, on the `customers` topic.

One type so far, `customer_traits`: it sets traits (`traits`, the built-in ones by name and
typed custom ones under `custom`), clears others (`unset`), or, with `replace`, clears every
trait it does not set. Per trait, the event with the latest `occurred_at` wins (ties: the
larger `event_id`), whatever order events arrive in; services/ingest/traits.py merges them.

The vocabulary (names and kinds) is `shared.segmentation.traits.BUILT_IN_TRAITS`, whose
names are the fields of `Traits` (a unit test keeps them so); `CustomerTraits.stored_values`
gives the stored form it describes.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from shared.events import limits
from shared.events.countries import COUNTRY_CODES
from shared.events.errors import EventRejected, RejectReason
from shared.events.fields import AwareDatetime, Id, OccurredAt, SchemaVersion

CUSTOMER_TRAITS: Final = "customer_traits"
CUSTOMER_EVENT_TYPES: Final = frozenset({CUSTOMER_TRAITS})

_CUSTOM_NAME: Final = re.compile(limits.CUSTOM_NAME_PATTERN)


Country = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=2,
        extra_json_schema={"enum": sorted(COUNTRY_CODES)},
        description="ISO 3166-1 alpha-2 code, upper case (DE, AT, GB; not UK).",
    ),
]
Place = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_PLACE_LENGTH)]
PostalCode = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_POSTAL_CODE_LENGTH)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_LABEL_LENGTH)]
Interest = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_INTEREST_LENGTH)]
CustomName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        extra_json_schema={"pattern": limits.CUSTOM_NAME_PATTERN},
    ),
]
_CUSTOM_VALUE_SCHEMA: Final = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": limits.MAX_CUSTOM_STRING_LENGTH},
        {
            "type": "integer",
            "minimum": limits.PROPERTY_INT_MIN,
            "maximum": limits.PROPERTY_INT_MAX,
        },
        {"type": "number"},
        {"type": "boolean"},
        {
            "type": "array",
            "maxItems": limits.MAX_CUSTOM_LIST_ITEMS,
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": limits.MAX_CUSTOM_LIST_ITEM_LENGTH,
            },
        },
    ]
}
# Values are checked after decoding (`_check_custom`), so that an error names the trait:
# msgspec locates a bad dict value only as `custom[...]`.
CustomTraits = Annotated[
    dict[CustomName, Any],
    msgspec.Meta(
        max_length=limits.MAX_CUSTOM_TRAITS,
        extra_json_schema={"additionalProperties": _CUSTOM_VALUE_SCHEMA},
        description=(
            "Custom traits by name: an identifier that is not a built-in trait's name. A "
            "value is a string, a number, a boolean or a list of strings."
        ),
    ),
]
TraitName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="A built-in trait's name, or a custom trait's name (bare, without custom.)",
    ),
]


class Traits(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """The traits an event sets; one left out is unchanged (unless `replace`)."""

    # Unknown names are refused, not ignored: a misspelt trait would otherwise vanish.

    country: Country | UnsetType = UNSET
    region: Place | UnsetType = UNSET
    city: Place | UnsetType = UNSET
    postal_code: PostalCode | UnsetType = UNSET
    birth_date: date | UnsetType = UNSET
    gender: Label | UnsetType = UNSET
    signup_channel: Label | UnsetType = UNSET
    signup_at: AwareDatetime | UnsetType = UNSET
    interests: (
        Annotated[tuple[Interest, ...], msgspec.Meta(max_length=limits.MAX_INTERESTS)] | UnsetType
    ) = UNSET
    marketing_consent: bool | UnsetType = UNSET
    custom: CustomTraits = msgspec.field(default_factory=dict)

    def names(self) -> list[str]:
        """The traits set, built-in and custom, by the names they are stored under."""
        return [*self.built_in(), *self.custom]

    def built_in(self) -> dict[str, Any]:
        """The built-in traits set, as typed values."""
        return {
            name: value for name in BUILT_IN_NAMES if (value := getattr(self, name)) is not UNSET
        }


BUILT_IN_NAMES: Final = tuple(name for name in Traits.__struct_fields__ if name != "custom")
UnsetNames = Annotated[
    tuple[TraitName, ...],
    msgspec.Meta(max_length=len(BUILT_IN_NAMES) + limits.MAX_CUSTOM_TRAITS),
]


class CustomerTraits(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Sets, clears or replaces a customer's traits, as of `occurred_at`."""

    type: Literal["customer_traits"]
    schema_version: SchemaVersion = 1
    event_id: Id
    customer_id: Id
    occurred_at: OccurredAt
    traits: Traits = msgspec.field(default_factory=Traits)
    unset: UnsetNames = ()
    replace: bool = False

    def stored_values(self) -> dict[str, Any]:
        """The traits this event sets in their stored form (`customer_traits.traits`): keyed
        by name, custom traits by their bare name; dates and times as ISO text (times in
        UTC), interests as a list without repeats."""
        out: dict[str, Any] = {}
        for name, value in self.traits.built_in().items():
            if isinstance(value, datetime):
                out[name] = value.astimezone(UTC).isoformat()
            elif isinstance(value, date):
                out[name] = value.isoformat()
            elif isinstance(value, tuple):
                out[name] = list(dict.fromkeys(value))
            else:
                out[name] = value
        for name, value in self.traits.custom.items():
            out[name] = list(value) if isinstance(value, list | tuple) else value
        return out


CustomerEvent: TypeAlias = CustomerTraits
"""Every event of the customers topic; a union once there is a second type."""


def check_customer_event(event: CustomerEvent) -> None:
    """What msgspec cannot check: country codes, date bounds against the event's own time,
    custom names and values, and that `unset` names traits the event does not also set.
    Deterministic: the event alone decides. Raises EventRejected(schema_violation)."""
    traits = event.traits
    if traits.country is not UNSET and traits.country not in COUNTRY_CODES:
        _reject("$.traits.country", f"{traits.country!r} is not an ISO 3166-1 alpha-2 code")
    latest = event.occurred_at + limits.MAX_FUTURE_SKEW
    if traits.birth_date is not UNSET and not (
        limits.MIN_BIRTH_DATE <= traits.birth_date <= latest.date()
    ):
        _reject(
            "$.traits.birth_date",
            f"must be from {limits.MIN_BIRTH_DATE.isoformat()} and not after the day of "
            "occurred_at (a day of slack for time zones)",
        )
    if traits.signup_at is not UNSET and not limits.MIN_SIGNUP_AT <= traits.signup_at <= latest:
        _reject(
            "$.traits.signup_at",
            f"must be from {limits.MIN_SIGNUP_AT.isoformat()} to no more than a day after "
            "the event's occurred_at",
        )
    for name, value in traits.custom.items():
        _check_custom(name, value)
    set_names = set(traits.built_in()) | set(traits.custom)
    for index, name in enumerate(event.unset):
        if name not in BUILT_IN_NAMES and not is_custom_name(name):
            _reject(f"$.unset[{index}]", f"{name!r} is not a built-in trait nor a custom name")
        if name in set_names:
            _reject(f"$.unset[{index}]", f"{name!r} is also set in traits")
    if not (set_names or event.unset or event.replace):
        _reject("$.traits", "the event changes nothing: set a trait, unset one, or replace")


def is_custom_name(name: str) -> bool:
    """Whether `name` may name a custom trait: an identifier that no built-in trait, derived
    metric or condition keyword uses."""
    return _CUSTOM_NAME.fullmatch(name) is not None and name.lower() not in _reserved()


@functools.cache
def _reserved() -> frozenset[str]:
    """Built-in and derived trait names and the condition keywords, read when first needed:
    the core imports shared.events (its loader knows the event types), so this module may
    not import the core while it loads."""
    from shared.segmentation.parser import KEYWORDS
    from shared.segmentation.traits import RESERVED_TRAIT_NAMES

    return frozenset(n.lower() for n in RESERVED_TRAIT_NAMES) | KEYWORDS


def _check_custom(name: str, value: Any) -> None:
    if not is_custom_name(name):
        reason = (
            "is a built-in trait's name (set it outside custom)"
            if name in BUILT_IN_NAMES
            else "is reserved"
            if name.lower() in _reserved()
            else f"must match {limits.CUSTOM_NAME_PATTERN}"
        )
        _reject("$.traits.custom", f"custom trait name {name!r} {reason}")
    path = f"$.traits.custom.{name}"
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not limits.PROPERTY_INT_MIN <= value <= limits.PROPERTY_INT_MAX:
            _reject(path, "an integer must fit a signed 64-bit integer")
    elif isinstance(value, float):
        if not math.isfinite(value):
            _reject(path, "a number must be finite")
    elif isinstance(value, str):
        if not 1 <= len(value) <= limits.MAX_CUSTOM_STRING_LENGTH:
            _reject(path, f"a string must have 1 to {limits.MAX_CUSTOM_STRING_LENGTH} characters")
    elif isinstance(value, list | tuple):
        if len(value) > limits.MAX_CUSTOM_LIST_ITEMS:
            _reject(path, f"a list must have at most {limits.MAX_CUSTOM_LIST_ITEMS} items")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                _reject(f"{path}[{index}]", "a list must hold strings only")
            if not 1 <= len(item) <= limits.MAX_CUSTOM_LIST_ITEM_LENGTH:
                _reject(
                    f"{path}[{index}]",
                    f"must have 1 to {limits.MAX_CUSTOM_LIST_ITEM_LENGTH} characters",
                )
    else:
        _reject(path, "must be a string, a number, a boolean or a list of strings")


def _reject(field: str, detail: str) -> None:
    raise EventRejected(RejectReason.SCHEMA_VIOLATION, field, detail)
