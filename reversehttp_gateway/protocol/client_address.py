"""The ``Requesting-Client`` header sent with each delivered request (RH-28)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

__all__ = ["format_requesting_client"]


def _port(value: object) -> int | None:
    """Return ``value`` as a TCP port number, or ``None`` if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        port = int(value)
    else:
        return None
    return port if 0 <= port <= 65535 else None


def format_requesting_client(client: Sequence[object] | None) -> str | None:
    """Format an ASGI ``scope["client"]`` (``[host, port]`` or ``None``) for ``Requesting-Client``.

    IPv4 gives ``A.B.C.D:PORT``; an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is written as
    its IPv4 form, because the Java client splits on the first ``:``. Other IPv6 addresses give
    ``[addr]:PORT`` in compressed form. ``None``, a host that is not an IP address (a unix socket
    path, ``"testclient"``) or an unusable port give ``None``.
    """
    if client is None or isinstance(client, str | bytes) or len(client) != 2:
        return None
    host, port = client[0], _port(client[1])
    if port is None or not isinstance(host, str):
        return None
    shown = _format_host(host)
    return None if shown is None else f"{shown}:{port}"


@functools.lru_cache(maxsize=4096)
def _format_host(host: str) -> str | None:
    """The host part of ``format_requesting_client`` (cached: one parse per peer address)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{address.compressed}]"
    return str(address)
