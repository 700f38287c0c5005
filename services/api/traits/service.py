"""A traits write as a customer event, checked by the contract ingest applies."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import msgspec

from services.api.errors import ApiError
from services.api.traits.repository import StoredRow
from services.api.traits.schemas import CustomerTraitsView, PatchBody, ReplaceBody, TraitStamp
from shared.events import (
    CUSTOMER_TRAITS,
    CustomerTraits,
    EventRejected,
    RejectReason,
    check_occurred_at,
    decode_customer_event,
)
from shared.events.errors import rejection_from_validation_error
from shared.segmentation.traits import BUILT_IN_TRAITS

_INDEX = re.compile(r"\[(\d+)\]")


def build_event(
    customer_id: str, body: bytes, *, replace: bool, now: datetime
) -> tuple[CustomerTraits, bytes]:
    """The event a PUT (`replace`) or PATCH body asks for, and its record value: validated
    by `decode_customer_event` and the clock bound on `occurred_at`, exactly as ingest will
    check it, or ApiError 422 naming the field (413 past the record size)."""
    shape: type[ReplaceBody | PatchBody] = ReplaceBody if replace else PatchBody
    try:
        request = msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as exc:
        raise _invalid(rejection_from_validation_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise _invalid(EventRejected(RejectReason.UNDECODABLE, None, str(exc))) from None
    event = CustomerTraits(
        type=CUSTOMER_TRAITS,
        event_id=request.event_id or f"api:{uuid.uuid4()}",
        customer_id=customer_id,
        occurred_at=request.occurred_at or now,
        traits=request.traits,
        unset=request.unset if isinstance(request, PatchBody) else (),
        replace=replace,
    )
    raw = msgspec.json.encode(event)
    try:
        checked = decode_customer_event(raw)
        check_occurred_at(checked.occurred_at, now=now)
    except EventRejected as rejected:
        raise _invalid(rejected) from None
    return checked, raw


def _invalid(rejected: EventRejected) -> ApiError:
    if rejected.reason is RejectReason.OVERSIZED:
        return ApiError(413, "body_too_large", f"as an event, {rejected.detail}")
    location = "body" + _INDEX.sub(r".\1", (rejected.field or "$").removeprefix("$"))
    problems = [{"location": location, "message": rejected.detail}]
    return ApiError(422, "validation_error", f"{location}: {rejected.detail}", problems=problems)


def view(customer_id: str, row: StoredRow) -> CustomerTraitsView:
    """The stored traits in the shape PUT takes: built-in by name, custom under `custom`."""
    traits: dict[str, Any] = {n: v for n, v in row.traits.items() if n in BUILT_IN_TRAITS}
    traits["custom"] = {n: v for n, v in row.traits.items() if n not in BUILT_IN_TRAITS}
    return CustomerTraitsView(
        customer_id=customer_id,
        traits=traits,
        set_by={
            name: TraitStamp(event_id=stamp["event_id"], occurred_at=stamp["at"])
            for name, stamp in sorted(row.trait_times.items())
            if name in row.traits
        },
        version=row.version,
        updated_at=row.updated_at,
    )
