"""Why an event was refused: the dead-letter reasons and the error that carries them."""

import re
from enum import StrEnum
from typing import ClassVar

import msgspec


class RejectReason(StrEnum):
    """Dead-letter reason for an input event; the value is what goes into the DLQ header."""

    OVERSIZED = "oversized"
    UNDECODABLE = "undecodable"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    # Ingest-level: never raised by `decode_event`, because they depend on the worker's clock
    # (`check_occurred_at`) or on its currency list.
    OCCURRED_AT_OUT_OF_RANGE = "occurred_at_out_of_range"
    UNKNOWN_CURRENCY = "unknown_currency"
    # The database refused the event itself (a value out of a column's range, say): found by
    # applying the events of a failed batch one at a time.
    REJECTED_BY_DATABASE = "rejected_by_database"


class EventRejected(Exception):
    """A record that can never be processed: send it to the dead-letter topic and move on."""

    retriable: ClassVar[bool] = False

    def __init__(self, reason: RejectReason, field: str | None, detail: str) -> None:
        super().__init__(reason, field, detail)
        self.reason = reason
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.reason}: {self.detail}"
        return f"{self.reason}: {self.field}: {self.detail}"


# msgspec reports "<detail> - at `<path>`", or "- at `key` in `<path>`" for a bad map key.
_LOCATED = re.compile(r"(?P<detail>.*) - at `(?P<path>[^`]*)`(?: in `(?P<container>[^`]*)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_REWORDED = {
    "Expected `datetime` with a timezone component": "datetime must have a timezone",
}


def rejection_from_validation_error(exc: msgspec.ValidationError) -> EventRejected:
    """Turn msgspec's message into a `schema_violation` that names the field as a JSON path."""
    message = str(exc)
    path: str | None = None
    located = _LOCATED.fullmatch(message)
    if located is not None:
        message = located["detail"]
        path = located["path"]
        if located["container"] is not None:
            path = located["container"]
            message = f"map key: {message}"
    missing = _MISSING.fullmatch(message)
    if missing is not None:
        return EventRejected(
            RejectReason.SCHEMA_VIOLATION,
            f"{path or '$'}.{missing['name']}",
            "required field is missing",
        )
    return EventRejected(
        RejectReason.SCHEMA_VIOLATION, path or "$", _REWORDED.get(message, message)
    )
