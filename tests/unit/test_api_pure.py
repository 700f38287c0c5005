"""The API's pure parts: cursors, key format, the body limit, error codes, the OpenAPI
document. No PostgreSQL, Redis or Kafka is touched: the app is built but never started."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from services.api.app import create_app
from services.api.auth.keys import hash_key, key_id_of, new_key
from services.api.customers.repository import StoredSegment
from services.api.customers.service import FallbackGate, _split
from services.api.errors import ApiError
from services.api.middleware import BodyLimitMiddleware
from services.api.pagination import decode_cursor, decode_int_cursor, encode_cursor
from services.api.segments.service import VersionInForce
from services.api.settings import ApiSettings
from shared.settings import ConnectionSettings


@given(
    kind=st.sampled_from(["h", "m", "a"]),
    # Keys come from PostgreSQL text: any character but NUL, and no lone surrogates.
    key=st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=1,
        max_size=200,
    ),
)
def test_cursor_round_trips_any_key(kind: str, key: str) -> None:
    assert decode_cursor(kind, encode_cursor(kind, key)) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!",
        "bm9wZQ",
        encode_cursor("m", "c-1"),
        encode_cursor("h", ""),
        encode_cursor("h", "a\x00b"),
        "aDo\u00e9",
    ],
)
def test_foreign_or_broken_cursors_are_422(cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        decode_cursor("h", cursor)
    assert (raised.value.status, raised.value.error) == (422, "invalid_cursor")


@pytest.mark.parametrize("key", ["12a", "-1", "\u00b2", "9" * 19])
def test_int_cursors_hold_a_bigint(key: str) -> None:
    with pytest.raises(ApiError):
        decode_int_cursor("h", encode_cursor("h", key))


def test_keys_carry_their_id_and_differ() -> None:
    (id1, key1), (id2, key2) = new_key(), new_key()
    assert key_id_of(key1) == id1
    assert key_id_of(key2) == id2
    assert id1 != id2
    assert len(hash_key(key1)) == 32
    assert hash_key(key1) != hash_key(key2)


@pytest.mark.parametrize(
    "presented", ["", "ssk_", "hunter2", "ssk_0123456789ab_short", "SSK_0123456789ab_" + "a" * 43]
)
def test_malformed_keys_have_no_id(presented: str) -> None:
    assert key_id_of(presented) is None


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def _call(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]], limit: int = 10
) -> tuple[int, bytes]:
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await BodyLimitMiddleware(_echo, max_bytes=limit)(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    ("chunks", "headers", "status"),
    [
        ([b"x" * 10], [(b"content-length", b"10")], 200),
        ([b"x" * 11], [(b"content-length", b"11")], 413),
        ([b"x" * 6, b"x" * 4], [(b"transfer-encoding", b"chunked")], 200),
        ([b"x" * 6, b"x" * 5], [(b"transfer-encoding", b"chunked")], 413),
        ([b"x" * 11], [(b"content-length", b"5")], 413),
        ([b""], [(b"content-length", b"1e3")], 400),
    ],
)
async def test_body_limit(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]], status: int
) -> None:
    got, body = await _call(chunks, headers)
    assert got == status, body
    if status == 413:
        assert b'"error":"body_too_large"' in body


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValidationError):
        ApiSettings(cache_timeout_ms=0)
    with pytest.raises(ValidationError):
        ApiSettings(max_body_bytes=10)


@pytest.fixture(scope="module")
def app() -> FastAPI:
    conn = ConnectionSettings(
        database_url="postgresql+asyncpg://u:p@db.invalid/x",
        redis_url="redis://redis.invalid",
        kafka_bootstrap="kafka.invalid:9092",
    )
    return create_app(conn, ApiSettings())


def _operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
    ]


def test_every_v1_operation_needs_a_key_and_documents_its_errors(app: FastAPI) -> None:
    v1 = [(p, m, op) for p, m, op in _operations(app) if p.startswith("/v1/")]
    assert len(v1) >= 11
    for path, method, op in v1:
        where = f"{method.upper()} {path}"
        assert op.get("security") == [{"bearer": []}, {"apiKey": []}], where
        for status in ("401", "403"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), where
        assert op.get("description") or op.get("summary"), where


def test_ops_endpoints_need_no_key(app: FastAPI) -> None:
    for path, _, op in _operations(app):
        if not path.startswith("/v1/"):
            assert "security" not in op, path


def test_response_bodies_have_examples(app: FastAPI) -> None:
    schemas = app.openapi()["components"]["schemas"]
    for name in ("CustomerSegments", "BatchResponse", "HistoryPage", "DefinitionsView"):
        assert schemas[name].get("examples"), name
    for name in ("MembersPage", "TransitionsView", "Readiness", "ErrorBody", "AuditPage"):
        assert schemas[name].get("examples"), name


async def test_fallback_gate_refuses_at_once_when_full() -> None:
    gate = FallbackGate(1)
    async with gate.slot():
        with pytest.raises(ApiError) as refused:
            async with gate.slot():
                pass
    assert (refused.value.status, refused.value.error) == (503, "overloaded")
    async with gate.slot():
        pass


def test_stored_rows_split_into_dimensions_and_audiences() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    rows = {
        "lifecycle": StoredSegment("active", at, "r", 2),
        "vip_at_risk": StoredSegment("member", at, "r", 2),
        # A dimension in force may have a segment called `member`: it stays a dimension.
        "club": StoredSegment("member", at, "r", 2),
    }
    in_force = VersionInForce(2, frozenset({"lifecycle", "club"}), frozenset())
    dimensions, audiences = _split(rows, in_force)
    assert (set(dimensions), set(audiences)) == ({"lifecycle", "club"}, {"vip_at_risk"})
    # Not knowing the version in force yet, a `member` row reads as an audience.
    dimensions, audiences = _split(rows, None)
    assert (set(dimensions), set(audiences)) == ({"lifecycle"}, {"vip_at_risk", "club"})
