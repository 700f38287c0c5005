"""API keys: their format, generation and hashing. Pure; the SQL is in repository.py.

A key is `ssk_<id>_<secret>`: `id` is 12 hex digits, stored in clear to find the key and to
name it in logs and the audit log; `secret` is 32 random bytes. Only SHA-256 of the whole
key is stored: the key has 256 bits of entropy, so a slow password hash would add nothing
but latency to every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal, get_args

Scope = Literal[
    "segments:read",
    "definitions:read",
    "definitions:write",
    "traits:write",
    "events:write",
    "webhooks:read",
    "webhooks:write",
    "admin",
]
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
_KEY = re.compile(r"ssk_([0-9a-f]{12})_[A-Za-z0-9_\-]{43}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id and name, and what it may do."""

    key_id: str
    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"ssk_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str | None:
    """The id inside a well-formed key, or None."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None
