"""Where deliveries may go. By default never to loopback, private, link-local or otherwise
non-global addresses (a task's webhook URL must not become a way into the server's network):
a name is checked on every connection, as it resolves, so that a name that resolves to such an
address later (DNS rebinding) is refused then too. --webhook-allow-private lifts this, for
internal receivers and tests."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.resolver import ThreadedResolver

from resinkit_grpc.notification_config import private_host, refused_address


class RefusedAddress(OSError):
    """The URL's host is, or resolves only to, addresses deliveries refuse."""


class GuardedResolver(ThreadedResolver):
    """The default resolver, keeping only the addresses deliveries may reach."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        found = await super().resolve(host, port, family)
        allowed = [entry for entry in found if not refused_address(_address(entry["host"]))]
        if not allowed:
            raise RefusedAddress(
                f"{host} resolves only to loopback, private or link-local addresses "
                "(--webhook-allow-private)"
            )
        return allowed


def check_url(url: str) -> None:
    """Refuses a URL whose host is such an address written out (the resolver never sees it)."""
    host = urlsplit(url).hostname or ""
    if private_host(host):
        raise RefusedAddress(
            f"{host} is a loopback, private or link-local address (--webhook-allow-private)"
        )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%", 1)[0])
