"""POST /v1/events' screening, pure: each event routed to ingest's topic for its family,
keyed by customer, as the bytes it came as; each refused one named by index, with the
reason ingest's own screen gives it on that topic."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.api.errors import ApiError
from services.api.events.service import EventIntake
from services.api.settings import ApiSettings
from shared.events import EventRejected
from shared.events.screening import Screen

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SETTINGS = ApiSettings(orders_topic="o", interactions_topic="i", customers_topic="c")
BASE = {"event_id": "e-1", "customer_id": "c-1", "occurred_at": "2026-05-01T11:00:00Z"}
ORDER = {**BASE, "type": "order_placed", "order_id": "o-1", "amount": "9.90", "currency": "EUR"}
VIEW = {**BASE, "type": "page_view", "event_id": "e-2", "customer_id": "c-2"}
TRAITS = {**BASE, "type": "customer_traits", "event_id": "e-3", "traits": {"country": "DE"}}


def batch(*events: object, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps({"events": list(events)}, option=option)


def test_each_family_goes_to_its_topic_keyed_by_customer_as_sent() -> None:
    body = batch(ORDER, VIEW, TRAITS, pretty=True)
    screened = EventIntake(SETTINGS).screen(body, NOW)
    assert [(t, k) for t, k, _ in screened.records] == [("o", b"c-1"), ("i", b"c-2"), ("c", b"c-1")]
    assert [orjson.loads(v) for _, _, v in screened.records] == [ORDER, VIEW, TRAITS]
    assert all(v in body for _, _, v in screened.records)  # the very bytes, indentation and all
    assert screened.rejections == []
    assert dict(screened.types) == {"order_placed": 1, "page_view": 1, "customer_traits": 1}


BAD = [
    ({**ORDER, "currency": "XYZ"}, "unknown_currency", "$.currency"),
    ({**ORDER, "occurred_at": "2026-05-03T12:00:00Z"}, "occurred_at_out_of_range", "$.occurred_at"),
    ({**ORDER, "amount": "1.00001"}, "schema_violation", "$.amount"),
    ({**ORDER, "type": "order_lost"}, "unknown_event_type", "$.type"),
    ({**VIEW, "schema_version": 9}, "unsupported_schema_version", "$.schema_version"),
    ({**TRAITS, "traits": {}}, "schema_violation", "$.traits"),
    ({**TRAITS, "traits": {"coutnry": "DE"}}, "schema_violation", "$.traits"),
    ({**VIEW, "customer_id": "a b"}, "schema_violation", "$.customer_id"),
    ("page_view", "schema_violation", "$"),
    (None, "schema_violation", "$"),
    ({**VIEW, "properties": {"p": "x" * 70_000}}, "oversized", None),
]


@pytest.mark.parametrize(("event", "reason", "field"), BAD)
def test_a_bad_event_is_refused_with_ingests_reason_and_the_rest_go_on(
    event: object, reason: str, field: str | None
) -> None:
    screened = EventIntake(SETTINGS).screen(batch(ORDER, event, VIEW), NOW)
    assert [orjson.loads(v)["event_id"] for _, _, v in screened.records] == ["e-1", "e-2"]
    [rejected] = screened.rejections
    assert (rejected.index, rejected.reason, rejected.field) == (1, reason, field)
    expected_id = event.get("event_id") if isinstance(event, dict) else None
    assert rejected.event_id == expected_id
    # The same verdict from ingest's screen, on the topic the event's family is read from.
    raw = orjson.dumps(event)
    topic = "c" if isinstance(event, dict) and event.get("type") == "customer_traits" else "o"
    with pytest.raises(EventRejected) as ingest:
        Screen(SETTINGS.currency_rates, "c")(raw, NOW, topic)
    assert (str(ingest.value.reason), ingest.value.field) == (reason, field)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "not JSON"),
        (b"[]", "object"),
        (b'{"events": []}', "at least one"),
        (b'{"events": {}}', "array"),
        (b'{"events": [], "x": 1}', "x"),
        (batch(*[VIEW] * 1001), "at most 1000 events, this one has 1001: send it as 2 batches"),
    ],
)
def test_a_body_that_is_no_batch_is_422(body: bytes, words: str) -> None:
    with pytest.raises(ApiError) as refused:
        EventIntake(SETTINGS).screen(body, NOW)
    assert refused.value.status == 422
    assert words in refused.value.detail


def test_a_batch_of_1000_is_taken() -> None:
    screened = EventIntake(SETTINGS).screen(batch(*[VIEW] * 1000), NOW)
    assert len(screened.records) == 1000
