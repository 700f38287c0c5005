"""Opaque cursors: a page's last key, tagged with what it is a key of, in URL-safe base64."""

from __future__ import annotations

import base64
import binascii

from services.api.errors import ApiError


def encode_cursor(kind: str, key: str) -> str:
    raw = f"{kind}:{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The key inside `cursor`; 422 if it is not a cursor of this `kind` of listing."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raw = ""
    tag, sep, key = raw.partition(":")
    # PostgreSQL text cannot hold NUL: such a key could not have come from a page.
    if tag != kind or not sep or not key or "\x00" in key:
        raise ApiError(422, "invalid_cursor", "cursor is not one this listing returned")
    return key


def decode_int_cursor(kind: str, cursor: str) -> int:
    key = decode_cursor(kind, cursor)
    if not (key.isascii() and key.isdigit()) or len(key) > 18:
        raise ApiError(422, "invalid_cursor", "cursor is not one this listing returned")
    return int(key)
