"""The segment-change CloudEvent: stable ids, deterministic bytes, strict decoding."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.events import (
    EventRejected,
    RejectReason,
    SegmentChange,
    decode_segment_change,
    encode_segment_change,
    segment_change_event,
    segment_change_id,
)
from shared.events.segment_change import (
    SEGMENT_CHANGE_DATASCHEMA,
    SEGMENT_CHANGE_ID_NAMESPACE,
    SEGMENT_CHANGED_TYPE,
    SEGMENTER_SOURCE,
)

CHANGE = SegmentChange(
    customer_id="cust-42",
    dimension="value_tier",
    from_segment="high",
    to_segment="vip",
    reason="spend_365d=612.40 >= vip_spend=428.28",
    cause="event",
    definition_version=3,
    caused_by_event_time=datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC),
    evaluated_at=datetime(2024, 5, 1, 12, 35, tzinfo=UTC),
    sequence=7,
)
INCARNATION = "0b2d3a5e-8f1c-4c6e-9a7b-2d4e6f8a0c1e"
CHANGE_ID = segment_change_id("cust-42", "value_tier", 7, INCARNATION)


def test_encoded_event_is_a_structured_cloudevent() -> None:
    envelope = json.loads(encode_segment_change(CHANGE, change_id=CHANGE_ID))

    assert envelope == {
        "specversion": "1.0",
        "id": CHANGE_ID,
        "source": SEGMENTER_SOURCE,
        "type": "io.streamseg.segment.changed.v1",
        "subject": "cust-42",
        "time": "2024-05-01T12:35:00Z",
        "datacontenttype": "application/json",
        "dataschema": SEGMENT_CHANGE_DATASCHEMA,
        "data": {
            "customer_id": "cust-42",
            "dimension": "value_tier",
            "from_segment": "high",
            "to_segment": "vip",
            "reason": "spend_365d=612.40 >= vip_spend=428.28",
            "cause": "event",
            "definition_version": 3,
            "caused_by_event_time": "2024-05-01T12:34:56Z",
            "evaluated_at": "2024-05-01T12:35:00Z",
            "sequence": 7,
        },
    }


def test_literal_defaults_match_the_named_constants() -> None:
    event = segment_change_event(CHANGE, change_id=CHANGE_ID)

    assert event.type == SEGMENT_CHANGED_TYPE
    assert event.dataschema == SEGMENT_CHANGE_DATASCHEMA


def test_encoding_is_deterministic_so_a_retried_publish_is_identical() -> None:
    assert encode_segment_change(CHANGE, change_id=CHANGE_ID) == encode_segment_change(
        SegmentChange(**{f: getattr(CHANGE, f) for f in CHANGE.__struct_fields__}),
        change_id=CHANGE_ID,
    )


@pytest.mark.parametrize(
    "change",
    [
        CHANGE,
        SegmentChange(
            customer_id="c",
            dimension="lifecycle",
            from_segment=None,
            to_segment="new",
            reason="first evaluation",
            cause="time",
            definition_version=0,
            caused_by_event_time=None,
            evaluated_at=datetime(2024, 5, 1, 14, 35, tzinfo=timezone(timedelta(hours=2))),
            sequence=0,
        ),
    ],
)
def test_round_trip(change: SegmentChange) -> None:
    event = decode_segment_change(encode_segment_change(change, change_id=CHANGE_ID))

    assert event == segment_change_event(change, change_id=CHANGE_ID)
    assert event.data == change


def test_id_is_stable_and_depends_on_every_input() -> None:
    first = segment_change_id("cust-42", "value", 7, INCARNATION)

    assert first == segment_change_id("cust-42", "value", 7, INCARNATION)
    assert len({first, segment_change_id("cust-43", "value", 7, INCARNATION)}) == 2
    assert len({first, segment_change_id("cust-42", "recency", 7, INCARNATION)}) == 2
    assert len({first, segment_change_id("cust-42", "value", 8, INCARNATION)}) == 2


def test_a_new_incarnation_never_repeats_an_id_of_the_last() -> None:
    # An erased customer who comes back numbers its changes from 1 again.
    erased, returned = str(uuid.uuid4()), str(uuid.uuid4())
    changes = [(d, n) for d in ("value", "rfm") for n in range(50)]
    before = {segment_change_id("cust-42", d, n, erased) for d, n in changes}
    after = {segment_change_id("cust-42", d, n, returned) for d, n in changes}
    assert len(before) == len(after) == 100
    assert not before & after


def test_id_cannot_collide_across_field_boundaries() -> None:
    assert segment_change_id("a:b", "c", 1, INCARNATION) != segment_change_id(
        "a", "b:c", 1, INCARNATION
    )


@given(st.text(), st.text(), st.integers(0, 2**63 - 1), st.uuids())
def test_change_id_is_the_uuid5_of_the_json_name(
    customer_id: str, dimension: str, sequence: int, incarnation: uuid.UUID
) -> None:
    name = msgspec.json.encode([customer_id, dimension, sequence, str(incarnation)]).decode()

    expected = uuid.uuid5(SEGMENT_CHANGE_ID_NAMESPACE, name)

    assert segment_change_id(customer_id, dimension, sequence, str(incarnation)) == str(expected)


def test_unknown_extension_attributes_are_ignored() -> None:
    envelope = json.loads(encode_segment_change(CHANGE, change_id=CHANGE_ID))
    envelope["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    expected = segment_change_event(CHANGE, change_id=CHANGE_ID)
    assert decode_segment_change(json.dumps(envelope).encode()) == expected


def _envelope(**overrides: Any) -> bytes:
    envelope = json.loads(encode_segment_change(CHANGE, change_id=CHANGE_ID))
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        target = envelope
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        pytest.param(
            _envelope(specversion="0.3"),
            RejectReason.SCHEMA_VIOLATION,
            "$.specversion",
            id="specversion",
        ),
        pytest.param(
            _envelope(type="io.streamseg.segment.changed.v2"),
            RejectReason.SCHEMA_VIOLATION,
            "$.type",
            id="type",
        ),
        pytest.param(
            _envelope(data__evaluated_at="2024-05-01T12:35:00"),
            RejectReason.SCHEMA_VIOLATION,
            "$.data.evaluated_at",
            id="naive-evaluated-at",
        ),
        pytest.param(
            _envelope(data__sequence=-1),
            RejectReason.SCHEMA_VIOLATION,
            "$.data.sequence",
            id="negative-sequence",
        ),
        pytest.param(b"{", RejectReason.UNDECODABLE, None, id="truncated"),
    ],
)
def test_invalid_segment_change_is_rejected(
    record: bytes, reason: RejectReason, field: str | None
) -> None:
    with pytest.raises(EventRejected) as caught:
        decode_segment_change(record)

    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_missing_data_field_is_named() -> None:
    envelope = json.loads(encode_segment_change(CHANGE, change_id=CHANGE_ID))
    del envelope["data"]["to_segment"]

    with pytest.raises(EventRejected) as caught:
        decode_segment_change(json.dumps(envelope).encode())

    assert caught.value.field == "$.data.to_segment"
