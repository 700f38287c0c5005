"""The segment-change event the segmenter publishes: CloudEvents 1.0, JSON structured mode."""

import hashlib
import uuid
from typing import Annotated, Final, Literal

import msgspec

from shared.events.errors import EventRejected, RejectReason, rejection_from_validation_error
from shared.events.fields import AwareDatetime, Id

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
"""Value of the Kafka `content-type` header for a structured-mode CloudEvent."""

SEGMENT_CHANGED_TYPE: Final = "io.streamseg.segment.changed.v1"
SEGMENTER_SOURCE: Final = "/streamseg/segmenter"
SEGMENT_CHANGE_DATASCHEMA: Final = "urn:streamseg:schema:segment_change:v1"
SEGMENT_CHANGE_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:streamseg:segment-change")

Name = Annotated[str, msgspec.Meta(min_length=1)]
# Why the customer was evaluated: the one list is in docs/events.md ("Causes").
CAUSES: Final = ("event", "time", "population", "definitions", "repair", "import")
Cause = Literal["event", "time", "population", "definitions", "repair", "import"]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class SegmentChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The `data` of a segment-change event: one customer moved within one dimension, or
    entered (`from_segment` None, `to_segment` "member") or left an audience."""

    customer_id: Id
    dimension: Name
    from_segment: Name | None
    # None: the dimension was removed, and the customer left it; or the customer left an
    # audience (`dimension` is then the audience's name).
    to_segment: Name | None
    reason: str
    cause: Cause
    definition_version: NonNegative
    caused_by_event_time: AwareDatetime | None
    evaluated_at: AwareDatetime
    sequence: NonNegative


class SegmentChangeEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A CloudEvents 1.0 envelope around a `SegmentChange`. Unknown attributes are ignored."""

    specversion: Literal["1.0"] = "1.0"
    id: Name
    source: Name
    type: Literal["io.streamseg.segment.changed.v1"] = "io.streamseg.segment.changed.v1"
    subject: Id
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Name = SEGMENT_CHANGE_DATASCHEMA
    data: SegmentChange


_decoder: Final = msgspec.json.Decoder(SegmentChangeEvent)
_encoder: Final = msgspec.json.Encoder()


_NAMESPACE_BYTES: Final = SEGMENT_CHANGE_ID_NAMESPACE.bytes


def segment_change_id(customer_id: str, dimension: str, sequence: int, incarnation: str) -> str:
    """The event id of a customer's `sequence`-th change, in the customer's `incarnation`:
    a UUIDv5, the same on every retry, never the same for two different changes.

    Consumers dedupe by it. A customer erased and then back starts a new incarnation, and
    its sequence numbers from 1 again: without the incarnation in the name, the returning
    customer's changes would carry the ids of the erased one's and be dropped as duplicates.
    The name is a JSON array so that no two inputs can collide.
    """
    # uuid.uuid5 spelled out: the segmenter makes one per change, and building a UUID object
    # only to print it took half its cost. The unit tests compare the two.
    name = _encoder.encode((customer_id, dimension, sequence, incarnation))
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def segment_change_event(
    change: SegmentChange, *, change_id: str, source: str = SEGMENTER_SOURCE
) -> SegmentChangeEvent:
    """Wrap a change in its envelope; `time` is `evaluated_at`, so the result is deterministic.

    `change_id` is the id recorded with the change (`segment_change_id` when it was made):
    it is stored, never derived again, so every copy of a change carries the same id."""
    return SegmentChangeEvent(
        id=change_id,
        source=source,
        subject=change.customer_id,
        time=change.evaluated_at,
        data=change,
    )


def encode_segment_change(
    change: SegmentChange, *, change_id: str, source: str = SEGMENTER_SOURCE
) -> bytes:
    """Encode a change as a structured-mode CloudEvent; equal changes give equal bytes."""
    return _encoder.encode(segment_change_event(change, change_id=change_id, source=source))


def decode_segment_change(raw: bytes) -> SegmentChangeEvent:
    """Decode a segment-change CloudEvent, or raise `EventRejected` saying why not."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise rejection_from_validation_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EventRejected(RejectReason.UNDECODABLE, None, str(exc)) from None
