"""The summary event of a definitions backfill published with `publish: summary`:
CloudEvents 1.0, JSON structured mode, on the segment-changes topic."""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

import msgspec

from shared.events.fields import AwareDatetime

DEFINITIONS_ACTIVATED_TYPE: Final = "io.streamseg.definitions.activated.v1"
DEFINITIONS_ACTIVATED_DATASCHEMA: Final = "urn:streamseg:schema:definitions_activated:v1"
# Records of this event carry this key, not a customer id: consumers tell them apart by
# the CloudEvents `type`, and the key keeps all of them in one partition, in order.
DEFINITIONS_EVENT_KEY: Final = "streamseg:definitions"
_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:streamseg:definitions-activated")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    dimension: str
    from_segment: str | None
    to_segment: str | None
    customers: NonNegative


class DefinitionsActivated(msgspec.Struct, frozen=True, kw_only=True):
    """The `data`: what one activation's re-evaluation moved, counted per transition."""

    version: NonNegative
    replaces: NonNegative | None
    changed_dimensions: list[str]
    customers: NonNegative  # walked by the backfill
    moved: NonNegative  # changes with cause "definitions" under this version
    transitions: list[Transition]
    activated_at: AwareDatetime
    completed_at: AwareDatetime


class DefinitionsActivatedEvent(msgspec.Struct, frozen=True, kw_only=True):
    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = "/streamseg/segmenter"
    type: Literal["io.streamseg.definitions.activated.v1"] = "io.streamseg.definitions.activated.v1"
    subject: str
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = DEFINITIONS_ACTIVATED_DATASCHEMA
    data: DefinitionsActivated


def definitions_activated_id(version: int) -> str:
    """One id per version: a retried publication is deduplicated by consumers."""
    return str(uuid.uuid5(_ID_NAMESPACE, str(version)))


def definitions_activated_event(data: DefinitionsActivated) -> DefinitionsActivatedEvent:
    return DefinitionsActivatedEvent(
        id=definitions_activated_id(data.version),
        subject=f"definitions/{data.version}",
        time=data.completed_at,
        data=data,
    )


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(DefinitionsActivatedEvent)


def encode_definitions_activated(data: DefinitionsActivated) -> bytes:
    return _encoder.encode(definitions_activated_event(data))


def decode_definitions_activated(raw: bytes) -> DefinitionsActivatedEvent:
    return _decoder.decode(raw)


__all__ = [
    "DEFINITIONS_ACTIVATED_TYPE",
    "DEFINITIONS_EVENT_KEY",
    "DefinitionsActivated",
    "Transition",
    "decode_definitions_activated",
    "encode_definitions_activated",
]
