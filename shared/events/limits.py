"""Limits of the event contracts, in one place.

Every limit here is enforced by `decode_event` (or, for the clock-dependent future bound, by
`check_occurred_at`) and listed in docs/events.md. Changing one is a contract change.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final

SCHEMA_VERSION: Final = 1
"""The only `schema_version` this code reads and writes."""

MAX_RECORD_BYTES: Final = 64 * 1024
"""A raw record larger than this is rejected before any parsing."""

ID_CHARSET: Final = r"A-Za-z0-9._:@\-"
ID_MAX_LENGTH: Final = 128
ID_PATTERN: Final = rf"^[{ID_CHARSET}]{{1,{ID_MAX_LENGTH}}}$"
"""`event_id`, `customer_id`, `order_id` and `sku`: 1..128 printable ASCII, no whitespace."""

CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"
"""ISO 4217 shaped. Whether the code is a currency we know is an ingest-level check."""

MAX_AMOUNT: Final = Decimal(10) ** 12
AMOUNT_DECIMAL_PLACES: Final = 4
AMOUNT_QUANTUM: Final = Decimal(1).scaleb(-AMOUNT_DECIMAL_PLACES)
"""Amounts and unit prices: 0 <= x <= 1e12, a multiple of 0.0001 (fits NUMERIC(17, 4))."""

MAX_ITEMS: Final = 200
MAX_ITEM_QUANTITY: Final = 1_000_000
MAX_CHANNEL_LENGTH: Final = 32
MAX_CATEGORY_LENGTH: Final = 128

MAX_PROPERTIES: Final = 50
MAX_PROPERTY_KEY_LENGTH: Final = 64
MAX_PROPERTY_STRING_LENGTH: Final = 1024
PROPERTY_INT_MIN: Final = -(2**63)
PROPERTY_INT_MAX: Final = 2**63 - 1
"""Property integers must fit a signed 64-bit integer, so every consumer can hold them."""

MIN_OCCURRED_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""`occurred_at` earlier than this is a schema violation (checked while decoding)."""

MAX_FUTURE_SKEW: Final = timedelta(days=1)
"""`occurred_at` later than `now` plus this is out of range (checked by the ingest worker)."""

# Profile events (shared/events/customers.py): the traits of a customer.
MAX_PLACE_LENGTH: Final = 128
"""`region` and `city`: 1 to 128 characters."""
MAX_POSTAL_CODE_LENGTH: Final = 32
MAX_LABEL_LENGTH: Final = 32
"""`gender` and `signup_channel`: 1 to 32 characters, like an order's `channel`."""
MAX_INTERESTS: Final = 100
MAX_INTEREST_LENGTH: Final = 64
MIN_BIRTH_DATE: Final = date(1900, 1, 1)
MIN_SIGNUP_AT: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""`birth_date` and `signup_at` from these on, and not after the event's `occurred_at` plus
`MAX_FUTURE_SKEW` (a date in the customer's time zone may be a day ahead of UTC)."""

MAX_CUSTOM_TRAITS: Final = 50
CUSTOM_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
"""A custom trait's name: an identifier, as names in conditions are."""
MAX_CUSTOM_STRING_LENGTH: Final = 1024
MAX_CUSTOM_LIST_ITEMS: Final = 100
MAX_CUSTOM_LIST_ITEM_LENGTH: Final = 256
"""Custom values: a string (1 to 1024 characters), a number (an int64 or a finite float), a
boolean, or a list of at most 100 strings of 1 to 256 characters."""
