"""The egress guard (SPEC §12): which addresses a notification may be sent to, and the resolve step.

Channels are configured by project admins, and every delivery is a request made *from inside* the
deployment: without a guard, a channel URL naming ``169.254.169.254`` reads a cloud's instance
metadata (credentials included), and one naming an internal host probes the private network.

- Link-local addresses (``169.254.0.0/16``, ``fe80::/10``) and the well-known metadata addresses
  (``fd00:ec2::254``, ``100.100.100.200``) are always refused.
- With ``PRODSENTINEL_NOTIFY_BLOCK_PRIVATE=1``, loopback, private (RFC 1918, ``fc00::/7``), shared
  (``100.64.0.0/10``), unspecified, multicast and reserved addresses are refused too. Off by default:
  a self-hosted service often notifies a receiver on its own network (and the tests run on 127.0.0.1).
- A name is refused when ANY of its addresses is refused (a mixed answer is how DNS rebinding starts),
  and :func:`resolve` returns the address that was checked: the caller connects to that address, never
  to the name again, so DNS changing between the check and the connect cannot bypass the guard.

:func:`blocked_reason` is pure; :func:`resolve` adds the DNS lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Final

__all__ = ("BlockedDestinationError", "blocked_reason", "resolve")

_METADATA: Final = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")
#: Resolved names are reused this long (the address stays the checked one either way).
_CACHE_SECONDS: Final = 10.0
_cache: dict[tuple[str, int, bool], tuple[float, str]] = {}


class BlockedDestinationError(OSError):
    """The destination resolves to a refused address (error code ``blocked_destination``)."""


def blocked_reason(address: str, *, block_private: bool) -> str | None:
    """Why ``address`` (an IP literal) is refused, or None when it may be contacted."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if not block_private:
        return None
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return f"{ip} is not a public unicast address"
    if ip.is_private or ip in _SHARED:
        return f"{ip} is a private address"
    return None


async def resolve(host: str, port: int, *, block_private: bool) -> str:
    """The address to connect to for ``host``: checked, and the one the caller must use.

    Raises :class:`BlockedDestinationError` when any address of the name is refused, ``OSError``
    (``socket.gaierror``) when the name does not resolve.
    """
    literal = host.strip("[]")
    try:
        ipaddress.ip_address(literal.split("%", 1)[0])
    except ValueError:
        pass
    else:
        reason = blocked_reason(literal, block_private=block_private)
        if reason is not None:
            raise BlockedDestinationError(f"destination {host} refused: {reason}")
        return literal
    key = (host.lower(), port, block_private)
    cached = _cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise socket.gaierror(f"{host} has no address")
    for address in addresses:
        reason = blocked_reason(address, block_private=block_private)
        if reason is not None:
            raise BlockedDestinationError(f"destination {host} refused: {reason}")
    _cache[key] = (time.monotonic() + _CACHE_SECONDS, addresses[0])
    return addresses[0]
