"""Constrained field types shared by the event families.

`Id` and `Currency` only declare their length to msgspec; their character rules are checked
after decoding (see `decoding.py`) because msgspec's per-field `pattern` costs about as much
as the rest of the decode. The rule still appears in the JSON Schema via `extra_json_schema`.
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from shared.events import limits

Id = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=limits.ID_MAX_LENGTH,
        extra_json_schema={"pattern": limits.ID_PATTERN},
    ),
]
Currency = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=3,
        extra_json_schema={"pattern": limits.CURRENCY_PATTERN},
        description="ISO 4217 style code, three uppercase letters.",
    ),
]
AwareDatetime = Annotated[
    datetime,
    msgspec.Meta(tz=True, description="RFC 3339 date-time with a timezone offset."),
]
OccurredAt = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description=(
            "RFC 3339 date-time with a timezone offset; not before 2000-01-01T00:00:00Z "
            "and not more than one day ahead of the consumer's clock."
        ),
    ),
]
Amount = Annotated[
    Decimal,
    msgspec.Meta(
        description=(
            "Non-negative decimal, at most 1e12 and at most 4 decimal places; "
            "a JSON number or a string."
        )
    ),
]
SchemaVersion = Literal[1]
