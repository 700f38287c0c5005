"""The profile event contract: what `decode_customer_event` accepts, what it refuses and
which field it names, and the stored form of the traits it sets."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import msgspec.inspect as mi
import pytest

from shared.events import (
    CUSTOMER_TRAITS,
    EventRejected,
    RejectReason,
    Traits,
    decode_customer_event,
    decode_event,
    limits,
)
from shared.events.customers import BUILT_IN_NAMES, is_custom_name
from shared.segmentation.traits import BUILT_IN_TRAITS, TraitKind, decode_traits, fits, kind_of


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "customer_traits",
        "schema_version": 1,
        "event_id": "evt-1",
        "customer_id": "cust-42",
        "occurred_at": "2026-05-01T12:00:00+02:00",
        "traits": {"country": "DE"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def traits(**values: Any) -> dict[str, Any]:
    return record(traits=values)


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_every_built_in_trait_decodes_into_its_stored_form() -> None:
    event = decode_customer_event(
        raw(
            traits(
                country="AT",
                region="Tirol",
                city="Innsbruck",
                postal_code="6020",
                birth_date="1990-02-28",
                gender="female",
                signup_channel="app",
                signup_at="2024-01-01T01:00:00+01:00",
                interests=["running", "yoga", "running"],
                marketing_consent=False,
            )
        )
    )

    assert event.type == CUSTOMER_TRAITS
    assert event.occurred_at == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert event.traits.birth_date == date(1990, 2, 28)
    assert event.stored_values() == {
        "country": "AT",
        "region": "Tirol",
        "city": "Innsbruck",
        "postal_code": "6020",
        "birth_date": "1990-02-28",
        "gender": "female",
        "signup_channel": "app",
        "signup_at": "2024-01-01T00:00:00+00:00",  # in UTC
        "interests": ["running", "yoga"],  # without repeats
        "marketing_consent": False,
    }
    assert decode_traits(event.stored_values())["signup_at"] == datetime(2024, 1, 1, tzinfo=UTC)


def test_custom_traits_are_stored_by_their_bare_name_with_their_json_type() -> None:
    values = {"tier": "gold", "visits": 12, "score": 0.5, "vip": True, "tags": ["a", "b"]}
    event = decode_customer_event(raw(traits(city="Graz", custom=values)))

    assert event.stored_values() == {"city": "Graz", **values}
    assert {name: kind_of(v) for name, v in values.items()} == {
        "tier": TraitKind.STRING,
        "visits": TraitKind.NUMBER,
        "score": TraitKind.NUMBER,
        "vip": TraitKind.BOOLEAN,
        "tags": TraitKind.STRINGS,
    }


def test_unset_and_replace_need_no_traits() -> None:
    assert decode_customer_event(raw(record(traits=..., unset=["city", "tier"]))).unset == (
        "city",
        "tier",
    )
    cleared = decode_customer_event(raw(record(traits={}, replace=True)))
    assert cleared.replace
    assert cleared.stored_values() == {}


def test_defaults_and_unknown_top_level_fields() -> None:
    event = decode_customer_event(raw(record(schema_version=..., later_field={"x": 1})))
    assert (event.schema_version, event.unset, event.replace) == (1, (), False)


def test_the_traits_struct_is_the_shared_vocabulary() -> None:
    """Every built-in trait of shared/segmentation/traits.py is a field, typed by its kind."""
    msgspec_types = {
        TraitKind.STRING: mi.StrType,
        TraitKind.BOOLEAN: mi.BoolType,
        TraitKind.STRINGS: mi.VarTupleType,
        TraitKind.DATE: mi.DateType,
        TraitKind.TIME: mi.DateTimeType,
    }
    info = mi.type_info(Traits)
    assert isinstance(info, mi.StructType)
    fields = [f for f in info.fields if f.name != "custom"]
    assert [f.name for f in fields] == list(BUILT_IN_TRAITS)
    for f in fields:
        found = f.type.type if isinstance(f.type, mi.Metadata) else f.type
        assert isinstance(found, msgspec_types[BUILT_IN_TRAITS[f.name].kind]), f.name
        assert not f.required, f.name


_TOO_LONG = "x" * (limits.MAX_PLACE_LENGTH + 1)

REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("country-not-iso", traits(country="UK"), "$.traits.country", "not an ISO 3166-1"),
    ("country-lower", traits(country="de"), "$.traits.country", "not an ISO 3166-1"),
    ("country-long", traits(country="DEU"), "$.traits.country", "length"),
    ("misspelt-trait", traits(coutnry="DE"), "$.traits", "unknown field `coutnry`"),
    ("null-trait", traits(city=None), "$.traits.city", "got `null`"),
    ("empty-city", traits(city=""), "$.traits.city", "length >= 1"),
    ("long-city", traits(city=_TOO_LONG), "$.traits.city", "length <= 128"),
    ("birth-date-format", traits(birth_date="01.02.1990"), "$.traits.birth_date", "date"),
    ("birth-date-day", traits(birth_date="1990-02-30"), "$.traits.birth_date", "date"),
    ("birth-date-future", traits(birth_date="2026-05-03"), "$.traits.birth_date", "not after"),
    ("birth-date-old", traits(birth_date="1899-12-31"), "$.traits.birth_date", "1900-01-01"),
    ("signup-naive", traits(signup_at="2024-01-01T00:00:00"), "$.traits.signup_at", "timezone"),
    ("signup-future", traits(signup_at="2026-05-03T00:00:00Z"), "$.traits.signup_at", "a day"),
    ("interests-not-list", traits(interests="running"), "$.traits.interests", "array"),
    ("interest-empty", traits(interests=["a", ""]), "$.traits.interests[1]", "length >= 1"),
    (
        "interests-many",
        traits(interests=[f"i{n}" for n in range(limits.MAX_INTERESTS + 1)]),
        "$.traits.interests",
        "length <= 100",
    ),
    ("consent-text", traits(marketing_consent="yes"), "$.traits.marketing_consent", "bool"),
    ("custom-built-in", traits(custom={"country": "DE"}), "$.traits.custom", "built-in"),
    ("custom-derived", traits(custom={"age": 30}), "$.traits.custom", "reserved"),
    ("custom-keyword", traits(custom={"in": 1}), "$.traits.custom", "reserved"),
    ("custom-not-identifier", traits(custom={"a-b": 1}), "$.traits.custom", "must match"),
    ("custom-object", traits(custom={"a": {"b": 1}}), "$.traits.custom.a", "a string, a number"),
    ("custom-null", traits(custom={"a": None}), "$.traits.custom.a", "a string, a number"),
    ("custom-list-of-numbers", traits(custom={"a": [1]}), "$.traits.custom.a[0]", "strings"),
    ("custom-int64", traits(custom={"a": 2**63}), "$.traits.custom.a", "64-bit"),
    ("custom-empty-string", traits(custom={"a": ""}), "$.traits.custom.a", "1 to 1024"),
    (
        "custom-many",
        traits(custom={f"c{n}": 1 for n in range(limits.MAX_CUSTOM_TRAITS + 1)}),
        "$.traits.custom",
        "length <= 50",
    ),
    ("unset-bad-name", record(unset=["no-such"]), "$.unset[0]", "not a built-in trait"),
    ("unset-also-set", record(unset=["country"]), "$.unset[0]", "also set"),
    ("nothing", record(traits={}), "$.traits", "changes nothing"),
    ("replace-text", record(replace="yes"), "$.replace", "bool"),
    ("no-type", record(type=...), "$.type", "required"),
    ("no-occurred-at", record(occurred_at=...), "$.occurred_at", "required"),
    ("bad-customer-id", record(customer_id="a b"), "$.customer_id", "must match"),
    ("nul", traits(city="a\u0000b"), "$.traits.city", "U+0000"),
    ("before-2000", record(occurred_at="1999-12-31T23:59:59Z"), "$.occurred_at", "earlier"),
]


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [pytest.param(doc, f, w, id=name) for name, doc, f, w in REFUSED],
)
def test_invalid_input_is_refused_naming_the_field(
    doc: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(EventRejected) as refused:
        decode_customer_event(raw(doc))

    assert refused.value.reason == RejectReason.SCHEMA_VIOLATION
    assert refused.value.field == field
    assert words in refused.value.detail, str(refused.value)


def test_a_number_out_of_range_is_refused() -> None:
    with pytest.raises(EventRejected) as refused:
        decode_customer_event(raw(traits()).replace(b"{}", b'{"custom": {"a": 1e999}}'))
    assert str(refused.value.field).startswith("$.traits.custom")


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (record(type="order_placed"), RejectReason.UNKNOWN_EVENT_TYPE),
        (record(type="profile_updated"), RejectReason.UNKNOWN_EVENT_TYPE),
        (record(schema_version=2, traits=[]), RejectReason.UNSUPPORTED_SCHEMA_VERSION),
    ],
)
def test_type_and_version_are_told_apart(doc: dict[str, Any], reason: RejectReason) -> None:
    with pytest.raises(EventRejected) as refused:
        decode_customer_event(raw(doc))
    assert refused.value.reason == reason


def test_each_family_stays_on_its_topic() -> None:
    with pytest.raises(EventRejected, match="belongs on the customers topic"):
        decode_event(raw(record()))
    with pytest.raises(EventRejected, match="belongs on the orders or interactions topic"):
        decode_customer_event(raw(record(type="page_view")))


def test_oversized_and_undecodable_records() -> None:
    big = raw(traits(city="x")).replace(b'"x"', b'"' + b"x" * limits.MAX_RECORD_BYTES + b'"')
    with pytest.raises(EventRejected) as refused:
        decode_customer_event(big)
    assert refused.value.reason == RejectReason.OVERSIZED
    with pytest.raises(EventRejected) as refused:
        decode_customer_event(b'{"type": "customer_traits", ')
    assert refused.value.reason == RejectReason.UNDECODABLE


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        *[("tier", True), ("_x9", True), ("Tier", True), ("a" * 64, True)],
        *[("country", False), ("age", False), ("days_since_signup", False), ("not", False)],
        *[("NULL", False), ("9a", False), ("a" * 65, False)],
    ],
)
def test_custom_names(name: str, allowed: bool) -> None:
    assert is_custom_name(name) is allowed


@pytest.mark.parametrize(
    ("kind", "value", "fit"),
    [
        (TraitKind.NUMBER, 3, True),
        (TraitKind.NUMBER, "3", False),
        (TraitKind.NUMBER, True, False),
        (TraitKind.BOOLEAN, True, True),
        (TraitKind.STRINGS, ["a"], True),
        (TraitKind.STRINGS, "a", False),
        (TraitKind.DATE, "2020-02-29", True),
        (TraitKind.DATE, "2020-02-30", False),
        (TraitKind.TIME, "2020-02-29T10:00:00+00:00", True),
        (TraitKind.TIME, "2020-02-29T10:00:00", False),
        (TraitKind.STRING, 1, False),
    ],
)
def test_a_custom_value_fits_its_declared_kind_or_reads_as_missing(
    kind: TraitKind, value: Any, fit: bool
) -> None:
    assert fits(kind, value) is fit
    assert ("x" in decode_traits({"x": value}, {"x": kind})) is fit


def test_the_contract_and_the_core_name_the_same_traits() -> None:
    assert tuple(BUILT_IN_TRAITS) == BUILT_IN_NAMES
    assert not is_custom_name("Country")  # a built-in name in another case is reserved
