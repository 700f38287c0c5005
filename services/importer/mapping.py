"""How a file's rows become events: which column is which, what a type value means, which
timezone naive times are in, and each event's id, derived from the row's content alone.

Pure: no I/O. A row becomes the JSON of an event, which ingest's own screen then decodes and
validates (services/ingest/batch.py `Screen`), so imported and streamed events meet the
same rules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from shared.events import INTERACTION_EVENT_TYPES
from shared.events.orders import ORDER_EVENT_TYPES

Kind = Literal["orders", "interactions"]
FIELDS: Final[dict[Kind, tuple[str, ...]]] = {
    "orders": ("customer", "order", "time", "amount", "currency", "type", "channel"),
    "interactions": ("customer", "time", "type", "properties"),
}
REQUIRED: Final[dict[Kind, frozenset[str]]] = {
    "orders": frozenset({"customer", "order", "time", "amount"}),
    "interactions": frozenset({"customer", "time", "type"}),
}
# Header names tried in order when a field is not mapped explicitly, compared after
# `normalise_header` ("Customer User ID" -> "customer_user_id"). They cover our own event
# field names and the usual names in Shopify and WooCommerce order exports.
DEFAULT_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "customer": (
        "customer_id",
        "customer",
        "customer_user_id",
        "user_id",
        "customer_email",
        "email",
        "billing_email",
    ),
    "order": ("order_id", "order_number", "order", "name", "id"),
    "time": (
        "occurred_at",
        "created_at",
        "order_date",
        "date_created",
        "processed_at",
        "paid_at",
        "timestamp",
        "date",
        "time",
    ),
    "amount": ("amount", "total", "order_total", "total_price", "total_amount", "value"),
    "currency": ("currency", "order_currency", "currency_code"),
    "type": ("type", "event_type", "event"),
    "properties": ("properties",),
    "channel": ("channel", "source_name", "sales_channel"),
}
# Type values, compared lower-cased; an order row without a type column (or with an empty
# value) is a placement.
DEFAULT_ORDER_TYPES: Final[dict[str, str]] = {
    **{t: t for t in ORDER_EVENT_TYPES},
    "placed": "order_placed",
    "order": "order_placed",
    "purchase": "order_placed",
    "paid": "order_placed",
    "completed": "order_placed",
    "refund": "order_refunded",
    "refunded": "order_refunded",
    "cancel": "order_cancelled",
    "cancelled": "order_cancelled",
    "canceled": "order_cancelled",
    "voided": "order_cancelled",
}
DEFAULT_INTERACTION_TYPES: Final[dict[str, str]] = {t: t for t in INTERACTION_EVENT_TYPES}
EVENT_ID_PREFIX: Final = "imp-"


class MappingError(ValueError):
    """The mapping or the file's columns cannot work; the message names what to fix."""


class RowRejected(ValueError):
    """One row cannot become an event: `reason` is a short code, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def normalise_header(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def parse_zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(
            f"unknown timezone {name!r} (an IANA name such as Europe/Berlin)"
        ) from None


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """The options a file is read with: explicit columns by field, extra type values, the
    zone of naive times and the currency of rows without one."""

    kind: Kind
    columns: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    currency: str = "EUR"

    def __post_init__(self) -> None:
        unknown = set(self.columns) - set(FIELDS[self.kind])
        if unknown:
            raise MappingError(
                f"unknown field(s) {sorted(unknown)} for {self.kind}; "
                f"fields are {', '.join(FIELDS[self.kind])}"
            )
        allowed = ORDER_EVENT_TYPES if self.kind == "orders" else INTERACTION_EVENT_TYPES
        for value, target in self.types.items():
            if target not in allowed:
                raise MappingError(
                    f"type value {value!r} maps to {target!r}, which is not one of "
                    f"{', '.join(sorted(allowed))}"
                )
        parse_zone(self.timezone)

    def fingerprint(self) -> str:
        """What changes how rows are read: part of a file's checkpoint key."""
        return orjson.dumps(
            {
                "kind": self.kind,
                "columns": dict(sorted(self.columns.items())),
                "types": dict(sorted(self.types.items())),
                "timezone": self.timezone,
                "currency": self.currency,
            }
        ).decode()


def load_mapping_file(content: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
    """The parts of a mapping file (YAML or JSON, already parsed) for files of `kind`:
    top-level `columns`, `types`, `timezone`, `currency`, or the same under `orders:` and
    `interactions:`."""
    if not isinstance(content, Mapping):
        raise MappingError("a mapping file must hold a mapping (columns:, types:, ...)")
    section = content.get(kind, content)
    if not isinstance(section, Mapping):
        raise MappingError(f"{kind}: must be a mapping")
    known = {"columns", "types", "timezone", "currency"}
    extra = set(section) - known - {"orders", "interactions"}
    if extra:
        raise MappingError(
            f"unknown key(s) {sorted(extra)} in the mapping file; known: {sorted(known)}"
        )
    out: dict[str, Any] = {}
    for key in known:
        if key in section:
            out[key] = section[key]
    for key in ("columns", "types"):
        if key in out and not isinstance(out[key], Mapping):
            raise MappingError(f"{key}: must map names to names")
        if key in out:
            out[key] = {str(k): str(v) for k, v in out[key].items()}
    return out


Getter = Callable[[Any], Any]


def _getter(key: str | int) -> Getter:
    if isinstance(key, int):
        return lambda row: row[key] if key < len(row) else None
    return lambda row: row.get(key)


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each field is in a row (an index for CSV, a key for JSON Lines and Parquet)."""

    source: Mapping[str, str]  # field: column name, for messages
    getters: Mapping[str, Getter]


def resolve_columns(mapping: ColumnMapping, header: Sequence[str], *, by_index: bool) -> Columns:
    """Each field's column in `header`: the one mapped explicitly (exact name, then
    normalised), else the first default name present. Raises MappingError naming the
    missing required fields and the header."""
    exact = {name: i for i, name in reversed(list(enumerate(header)))}
    normalised = {normalise_header(name): i for i, name in reversed(list(enumerate(header)))}
    source: dict[str, str] = {}
    getters: dict[str, Getter] = {}
    for name in FIELDS[mapping.kind]:
        index: int | None = None
        if name in mapping.columns:
            wanted = mapping.columns[name]
            index = exact.get(wanted, normalised.get(normalise_header(wanted)))
            if index is None:
                raise MappingError(
                    f"{name} is mapped to column {wanted!r}, which the file does not have; "
                    f"its columns: {', '.join(header)}"
                )
        else:
            for candidate in DEFAULT_COLUMNS[name]:
                if candidate in normalised:
                    index = normalised[candidate]
                    break
        if index is None:
            continue
        source[name] = header[index]
        getters[name] = _getter(index if by_index else header[index])
    missing = sorted(REQUIRED[mapping.kind] - source.keys())
    if missing:
        raise MappingError(
            f"no column for {', '.join(missing)} among: {', '.join(header)}; map one with "
            f"--column FIELD=COLUMN or a mapping file (defaults are in docs/import.md)"
        )
    return Columns(source, getters)


def parse_time(value: Any, zone: tzinfo) -> datetime:
    """An aware datetime from a cell: ISO 8601 / RFC 3339 (a space for the T, an offset
    with or without a colon, Z), or a datetime. Naive times are in `zone`; a naive time
    that occurs twice (clocks going back) is its first occurrence."""
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise RowRejected("missing_time", "the time is empty")
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            at = _parse_loose(text)
    else:
        raise RowRejected("unparseable_time", f"{value!r} is not a time")
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone, fold=0)
    return at.astimezone(UTC)


_LOOSE_FORMATS: Final = ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M %z", "%Y/%m/%d %H:%M:%S")


def _parse_loose(text: str) -> datetime:
    for fmt in _LOOSE_FORMATS:
        try:
            return datetime.strptime(text, fmt)  # noqa: DTZ007 - zone applied by the caller
        except ValueError:
            continue
    raise RowRejected("unparseable_time", f"{text!r} is not an ISO 8601 time")


def _text(value: Any) -> str:
    if type(value) is str:
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids read as numbers by Parquet writers
    return str(value).strip()


def _amount_text(value: Any) -> str:
    """The amount as a decimal string; rejected later by the event's own validation if it
    is not a valid amount."""
    if isinstance(value, float):
        return repr(value)
    return _text(value)


_PLAIN_AMOUNT: Final = re.compile(r"[0-9]{1,13}(\.[0-9]{1,4})?")


def canonical_amount(text: str) -> str:
    """`10.50`, `10.5` and `1.05E1` are one amount, so they give one event id."""
    if _PLAIN_AMOUNT.fullmatch(text):  # the usual case, without a Decimal
        whole, _, fraction = text.partition(".")
        whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
        return f"{whole}.{fraction}" if fraction else whole
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    return format(number.normalize(), "f")


def event_id(*parts: str) -> str:
    """A content-derived event id: the same parts give the same id in any file, at any
    line. Time-ordered at the front (the epoch-ms in `parts[0]`), so that ingest's dedup
    ledger inserts a sorted history's ids near each other."""
    digest = hashlib.blake2b("\x1f".join(parts[1:]).encode(), digest_size=16).hexdigest()
    return f"{EVENT_ID_PREFIX}{parts[0]}-{digest}"


def _time_key(at: datetime) -> str:
    return format(int(at.timestamp() * 1000), "012x")


@dataclass(frozen=True, slots=True)
class OrderFields:
    """An order row's fields as read, before the event's own validation."""

    type: str
    event_id: str
    customer_id: str
    order_id: str
    occurred_at: datetime
    amount: str
    currency: str
    channel: str | None

    def json(self) -> bytes:
        """The event as JSON, for `decode_event`: the reference validation and its reasons."""
        doc: dict[str, Any] = {
            "type": self.type,
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "order_id": self.order_id,
            "occurred_at": self.occurred_at.isoformat(timespec="microseconds"),
            "amount": self.amount,
            "currency": self.currency,
        }
        if self.channel is not None:
            doc["channel"] = self.channel
        return orjson.dumps(doc)


def plain_amount(text: str) -> Decimal | None:
    """The amount if it is written plainly (digits, a point, at most 4 places): then the
    decoder reads it as Decimal does. Anything else is left to the decoder."""
    return Decimal(text) if _PLAIN_AMOUNT.fullmatch(text) else None


@dataclass(frozen=True, slots=True)
class RowReader:
    """Reads one row's fields; raises RowRejected for what no event can be made of."""

    mapping: ColumnMapping
    columns: Columns
    zone: tzinfo
    types: Mapping[str, str]

    @classmethod
    def build(cls, mapping: ColumnMapping, columns: Columns) -> RowReader:
        base = DEFAULT_ORDER_TYPES if mapping.kind == "orders" else DEFAULT_INTERACTION_TYPES
        types = {**base, **{k.strip().lower(): v for k, v in mapping.types.items()}}
        return cls(mapping, columns, parse_zone(mapping.timezone), types)

    def _customer_and_time(self, row: Any) -> tuple[str, datetime, str]:
        getters = self.columns.getters
        customer = _text(getters["customer"](row))
        if not customer:
            raise RowRejected(
                "missing_customer", f"no customer ({self.columns.source['customer']})"
            )
        at = parse_time(getters["time"](row), self.zone)
        kind_getter = getters.get("type")
        raw_type = _text(kind_getter(row)) if kind_getter is not None else ""
        return customer, at, raw_type

    def _type(self, raw_type: str) -> str:
        if not raw_type and self.mapping.kind == "orders":
            return "order_placed"
        found = self.types.get(raw_type.lower())
        if found is None:
            raise RowRejected(
                "unknown_type", f"type {raw_type!r} is not known; map it in the mapping file"
            )
        return found

    def order(self, row: Any) -> OrderFields:
        # The hot loop of an import: one call per row, so the getters are looked up once.
        g = self.columns.getters
        get_type, get_currency, get_channel = g.get("type"), g.get("currency"), g.get("channel")
        customer = _text(g["customer"](row))
        if not customer:
            raise RowRejected(
                "missing_customer", f"no customer ({self.columns.source['customer']})"
            )
        at = parse_time(g["time"](row), self.zone)
        order = _text(g["order"](row)).removeprefix("#")
        if not order:
            raise RowRejected("missing_order", f"no order id ({self.columns.source['order']})")
        amount = _amount_text(g["amount"](row))
        if not amount:
            raise RowRejected("missing_amount", f"no amount ({self.columns.source['amount']})")
        currency = (
            _text(get_currency(row)).upper() if get_currency is not None else ""
        ) or self.mapping.currency
        channel = (_text(get_channel(row)) or None) if get_channel is not None else None
        raw_type = _text(get_type(row)) if get_type is not None else ""
        kind = self._type(raw_type) if raw_type else "order_placed"
        eid = event_id(
            _time_key(at),
            customer,
            order,
            kind,
            at.isoformat(timespec="microseconds"),
            canonical_amount(amount),
            currency,
        )
        return OrderFields(kind, eid, customer, order, at, amount, currency, channel)

    def interaction_json(self, row: Any) -> tuple[bytes, datetime]:
        """The interaction's JSON for `decode_event`, and its time."""
        customer, at, raw_type = self._customer_and_time(row)
        if not raw_type:
            raise RowRejected("missing_type", f"no type ({self.columns.source['type']})")
        kind = self._type(raw_type)
        properties: Any = {}
        getter = self.columns.getters.get("properties")
        raw = getter(row) if getter is not None else None
        if isinstance(raw, str) and raw.strip():
            try:
                properties = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise RowRejected("bad_properties", "properties is not a JSON object") from None
        elif isinstance(raw, dict):
            properties = raw
        if not isinstance(properties, dict):
            raise RowRejected("bad_properties", "properties is not a JSON object")
        when = at.isoformat(timespec="microseconds")
        props = orjson.dumps(properties, option=orjson.OPT_SORT_KEYS).decode()
        eid = event_id(_time_key(at), customer, kind, when, props)
        doc = {
            "type": kind,
            "event_id": eid,
            "customer_id": customer,
            "occurred_at": when,
            "properties": properties,
        }
        return orjson.dumps(doc), at


def parse_assignments(pairs: Iterable[str], what: str) -> dict[str, str]:
    """`FIELD=COLUMN` pairs from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise MappingError(f"{what} {pair!r} must be NAME=VALUE")
        out[name.strip()] = value.strip()
    return out
