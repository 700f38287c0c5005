"""The summary event of a historical import published with `--publish summary`:
CloudEvents 1.0, JSON structured mode, on the segment-changes topic."""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

import msgspec

from shared.events.definitions_activated import Transition
from shared.events.fields import AwareDatetime

IMPORT_COMPLETED_TYPE: Final = "io.streamseg.import.completed.v1"
IMPORT_COMPLETED_DATASCHEMA: Final = "urn:streamseg:schema:import_completed:v1"
# As for definitions summaries: not a customer id, one partition, in order.
IMPORT_EVENT_KEY: Final = "streamseg:import"
_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:streamseg:import-completed")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class ImportCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """The `data`: what one import's evaluation (cause "import") moved, per transition."""

    import_id: str
    customers: NonNegative  # queued for evaluation by the import
    moved: NonNegative  # changes with cause "import"
    transitions: list[Transition]
    until: AwareDatetime  # the import holds events before this time
    started_at: AwareDatetime
    completed_at: AwareDatetime


class ImportCompletedEvent(msgspec.Struct, frozen=True, kw_only=True):
    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = "/streamseg/importer"
    type: Literal["io.streamseg.import.completed.v1"] = "io.streamseg.import.completed.v1"
    subject: str
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = IMPORT_COMPLETED_DATASCHEMA
    data: ImportCompleted


def import_completed_id(import_id: str) -> str:
    """One id per import: a retried publication is deduplicated by consumers."""
    return str(uuid.uuid5(_ID_NAMESPACE, import_id))


def import_completed_event(data: ImportCompleted) -> ImportCompletedEvent:
    return ImportCompletedEvent(
        id=import_completed_id(data.import_id),
        subject=f"imports/{data.import_id}",
        time=data.completed_at,
        data=data,
    )


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(ImportCompletedEvent)


def encode_import_completed(data: ImportCompleted) -> bytes:
    return _encoder.encode(import_completed_event(data))


def decode_import_completed(raw: bytes) -> ImportCompletedEvent:
    return _decoder.decode(raw)


__all__ = [
    "IMPORT_COMPLETED_TYPE",
    "IMPORT_EVENT_KEY",
    "ImportCompleted",
    "decode_import_completed",
    "encode_import_completed",
]
