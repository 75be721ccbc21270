"""The client's address: the one rule, for the rate limiter and anything else that needs it.

The socket's peer is the client unless it is a trusted proxy (`RRMM_TRUSTED_PROXIES`); then
the proxies' headers are read from the right (the entry the nearest proxy appended) and
the first address that is not itself a trusted proxy is the client. Everything to the left
of it was written by the client and proves nothing. With no trusted proxy (the default) no
header is believed, whoever sends it.

uvicorn is given the same list (app/serving.py), so its own `X-Forwarded-For` handling
gives the same answer; this module also reads RFC 7239 `Forwarded`, which uvicorn does not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import ASGIApp, Receive, Scope, Send

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]+)', re.IGNORECASE)
UNKNOWN = "unknown"


def _parse(value: str) -> Address | None:
    """An address from one header entry: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `"[::1]"`."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return ip_address(value)
    except ValueError:
        return None


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in trusted)


def _hops(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The forwarded-for chain, left (the claimed client) to right (the nearest proxy's
    peer). `Forwarded` wins over `X-Forwarded-For` when a proxy sends both."""
    forwarded = [v.decode("latin-1") for k, v in headers if k == b"forwarded"]
    if forwarded:
        return [m.group(1) for m in _FORWARDED_FOR.finditer(", ".join(forwarded))]
    xff = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
    return [part for part in ", ".join(xff).split(",") if part.strip()]


def resolve(
    peer: str | None, headers: Sequence[tuple[bytes, bytes]], trusted: Sequence[Network]
) -> str:
    """The client's address for a request from `peer` with these headers."""
    if not peer:
        return UNKNOWN
    peer_address = _parse(peer)
    if peer_address is None or not trusted or not _trusted(peer_address, trusted):
        return peer
    client = peer
    for hop in reversed(_hops(headers)):
        address = _parse(hop)
        if address is None:
            # An entry nobody can vouch for (`unknown`, a secret token, garbage): stop at
            # the last address a trusted proxy did give us.
            return client
        client = str(address)
        if not _trusted(address, trusted):
            return client
    return client


def client_address(scope: Scope) -> str:
    """The resolved client address of a request (set by `ClientAddress`), else the peer."""
    client = scope.get("client")
    return str(client[0]) if client else UNKNOWN


class ClientAddress:
    """Outermost middleware: replaces `scope["client"]` with the resolved address, once, so
    the limiter, the handlers and any library that reads `request.client` agree."""

    def __init__(self, app: ASGIApp, *, trusted: Sequence[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.trusted:
            peer = scope.get("client")
            host = resolve(peer[0] if peer else None, scope.get("headers", []), self.trusted)
            if peer and host != peer[0]:
                scope["client"] = (host, 0)
        await self.app(scope, receive, send)
