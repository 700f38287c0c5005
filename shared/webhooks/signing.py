"""Standard Webhooks signatures (version 1.0.0, symmetric): secrets, signing, headers.

A secret is `whsec_` followed by the base64 of 24 to 64 random bytes; the HMAC key is the
decoded bytes. The signed content is `{webhook-id}.{webhook-timestamp}.{body}` and each
signature is `v1,<base64 HMAC-SHA256>`; `webhook-signature` holds one per secret in use,
space-separated, so that a receiver keeps verifying during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES: Final = 32
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64


class InvalidSecretError(ValueError):
    """A secret that is not `whsec_` and the base64 of 24 to 64 bytes."""


def new_secret() -> str:
    """A fresh secret, `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of `secret`, or InvalidSecretError saying what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecretError(f"a secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecretError(f"after {SECRET_PREFIX!r} a secret is base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidSecretError(
            f"a secret decodes to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the body under `key`."""
    content = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: Iterable[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: a signature under each key, space-separated, current first."""
    return " ".join(sign(k, message_id, timestamp, body) for k in keys)


def webhook_headers(
    keys: Iterable[bytes], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, message_id, timestamp, body),
    }
