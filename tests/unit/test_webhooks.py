"""The pure parts of webhooks: signing against an independent computation, the retry
schedule's bounds, filters as a table, and which addresses are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.webhooks.settings import WebhooksSettings
from shared.webhooks.filters import Filters
from shared.webhooks.schedule import RetrySchedule
from shared.webhooks.signing import (
    InvalidSecretError,
    new_secret,
    secret_key,
    sign,
    signature_header,
    webhook_headers,
)
from shared.webhooks.targets import TargetRefusedError, check_addresses, check_url, is_public

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _reference(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@given(st.text(min_size=1, max_size=40).filter(lambda s: "." not in s), st.binary(max_size=200))
def test_a_signature_is_the_standard_webhooks_hmac(msg_id: str, body: bytes) -> None:
    secret = new_secret()
    assert sign(secret_key(secret), msg_id, 1674087231, body) == _reference(
        secret, msg_id, 1674087231, body
    )


def test_rotation_signs_with_each_key_space_separated_current_first() -> None:
    old, new = new_secret(), new_secret()
    header = signature_header([secret_key(new), secret_key(old)], "m", 5, b"{}")
    assert header.split(" ") == [_reference(new, "m", 5, b"{}"), _reference(old, "m", 5, b"{}")]
    headers = webhook_headers([secret_key(new)], "m", 5, b"{}")
    assert headers == {
        "webhook-id": "m",
        "webhook-timestamp": "5",
        "webhook-signature": _reference(new, "m", 5, b"{}"),
    }


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("abc", "starts with"),
        ("whsec_!!!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64"),
    ],
)
def test_bad_secrets_are_refused_naming_the_problem(secret: str, problem: str) -> None:
    with pytest.raises(InvalidSecretError, match=problem):
        secret_key(secret)


def test_new_secrets_are_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert len(secret_key(a)) == 32


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (10, 2560.0), (11, 3600.0), (99, 3600.0)],
)
def test_the_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert RetrySchedule().ceiling(attempt) == ceiling


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_full_jitter_waits_between_zero_and_the_ceiling(attempt: int, seed: int) -> None:
    schedule = RetrySchedule()
    deadline = NOW + timedelta(days=2)
    at = schedule.next_attempt_at(attempt, NOW, deadline, rng=random.Random(seed))
    assert at is not None
    assert NOW <= at <= NOW + timedelta(seconds=schedule.ceiling(attempt))


def test_the_deadline_ends_retries_and_retry_after_raises_the_wait() -> None:
    schedule = RetrySchedule(1.0, 10.0, 60.0)
    deadline = schedule.deadline(NOW)
    assert deadline == NOW + timedelta(seconds=60)
    assert (
        schedule.next_attempt_at(1, deadline - timedelta(seconds=0.5), deadline, rng=_Max()) is None
    )
    at = schedule.next_attempt_at(1, NOW, deadline, retry_after_seconds=7, rng=_Max())
    assert at == NOW + timedelta(seconds=7)
    capped = schedule.next_attempt_at(1, NOW, deadline, retry_after_seconds=999, rng=_Max())
    assert capped == NOW + timedelta(seconds=10)
    with pytest.raises(ValueError, match="initial"):
        RetrySchedule(0, 1, 1)


class _Max(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_default_schedule_spans_24_hours_and_the_lease_outlasts_a_request() -> None:
    settings = WebhooksSettings()
    assert settings.schedule.total_seconds == 86_400
    with pytest.raises(ValueError, match="LEASE_SECONDS"):
        WebhooksSettings(lease_seconds=5, request_timeout_seconds=10)


@pytest.mark.parametrize(
    ("filters", "change", "accepted"),
    [
        (Filters(), ("lifecycle", None, "new", "event"), True),
        (Filters(dimensions=frozenset({"lifecycle"})), ("lifecycle", "a", "b", "time"), True),
        (Filters(dimensions=frozenset({"lifecycle"})), ("rfm", "a", "b", "time"), False),
        (Filters(audiences=frozenset({"vip"})), ("vip", None, "member", "event"), True),
        (
            Filters(dimensions=frozenset({"rfm"}), audiences=frozenset({"vip"})),
            ("vip", "member", None, "event"),
            True,
        ),
        (Filters(segments=frozenset({"active"})), ("lifecycle", "active", "lapsed", "time"), True),
        (Filters(segments=frozenset({"active"})), ("lifecycle", "new", "active", "time"), True),
        (Filters(segments=frozenset({"active"})), ("lifecycle", "new", None, "time"), False),
        (Filters(causes=frozenset({"event"})), ("lifecycle", "new", "active", "time"), False),
        (
            Filters(dimensions=frozenset({"lifecycle"}), causes=frozenset({"time"})),
            ("lifecycle", "new", "active", "time"),
            True,
        ),
    ],
)
def test_filters(
    filters: Filters, change: tuple[str, str | None, str | None, str], accepted: bool
) -> None:
    assert filters.accepts(*change) is accepted


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address checked, not bound
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::1", False),
    ],
)
def test_which_addresses_a_webhook_may_reach(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_urls_and_addresses_are_refused_naming_why() -> None:
    assert check_url("https://hooks.example.com/x") == ("hooks.example.com", 443)
    assert check_url("http://hooks.example.com:8080/x") == ("hooks.example.com", 8080)
    for url, why in (
        ("ftp://x/", "scheme"),
        ("http://u:p@x/", "user name"),
        ("http:///x", "no host"),
        ("http://x:99999/", "port"),
    ):
        with pytest.raises(TargetRefusedError, match=why):
            check_url(url)
    with pytest.raises(TargetRefusedError, match="ALLOW_PRIVATE_TARGETS"):
        check_addresses("h", ["93.184.216.34", "10.0.0.1"], allow_private=False)
    assert check_addresses("h", ["127.0.0.1"], allow_private=True) == ["127.0.0.1"]
    with pytest.raises(TargetRefusedError, match="no address"):
        check_addresses("h", [], allow_private=True)
