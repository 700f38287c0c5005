"""Server-side request forgery: which webhook targets are refused.

A target is refused when its URL is not plain http(s) with a host, or when any address its
host resolves to is not globally routable: loopback, private, link-local, carrier-grade
NAT, multicast, reserved, unspecified, or an IPv6 form of one of them. The check runs when
a subscription is written and again at every connection the dispatcher makes, on the
addresses it then connects to (services/webhooks/client.py), so a name that resolves to a
public address at first and to an internal one later (DNS rebinding) is still refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefusedError(Exception):
    """The target may not be called; the message says why."""


def is_public(address: IPAddress) -> bool:
    """Whether `address` is globally routable unicast (what a webhook may reach)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or _teredo_client(address)
        if embedded is not None:
            return is_public(embedded)
    return bool(
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_private
        and not address.is_unspecified
    )


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    teredo = address.teredo
    return teredo[1] if teredo else None


def check_url(url: str) -> tuple[str, int]:
    """The host and port of a webhook URL, or TargetRefusedError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefusedError("the URL's scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise TargetRefusedError("the URL may not carry a user name or password")
    if not parts.hostname:
        raise TargetRefusedError("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefusedError("the URL's port is not a number from 1 to 65535") from None
    return parts.hostname, port


def check_addresses(host: str, addresses: list[str], *, allow_private: bool) -> list[str]:
    """`addresses` if each may be reached, else TargetRefusedError naming the first that may
    not. With `allow_private` everything is allowed (tests, private deployments)."""
    if not addresses:
        raise TargetRefusedError(f"{host} resolves to no address")
    if not allow_private:
        for text in addresses:
            if not is_public(ipaddress.ip_address(text.split("%", 1)[0])):
                raise TargetRefusedError(
                    f"{host} resolves to {text}, a loopback, private, link-local, multicast "
                    "or reserved address; set STREAMSEG_WEBHOOKS_ALLOW_PRIVATE_TARGETS=true "
                    "to allow such targets"
                )
    return addresses


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for TCP (an IP literal resolves to itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise TargetRefusedError(f"{host} does not resolve: {exc.strerror}") from None
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen[str(sockaddr[0])] = None
    return list(seen)


async def check_target(url: str, *, allow_private: bool) -> list[str]:
    """Resolve the URL's host and check every address; returns them in resolver order."""
    host, port = check_url(url)
    return check_addresses(host, await resolve(host, port), allow_private=allow_private)
