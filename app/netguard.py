"""Where webhooks may point: `https` to public addresses only, unless explicitly allowed.

Checked when a URL is registered and again, on the resolved address, when it is called
(DNS can change in between), so a member record cannot be used to reach the metadata
service or anything else inside our network. Both checks read the host as the HTTP client
(`app.deliveries.http1`, through yarl) will connect to it: yarl applies IDNA/NFKC, so
`１２７.０.０.１` and `ｌｏｃａｌｈｏｓｔ` are loopback, whatever the raw text looks like.
"""

from __future__ import annotations

import ipaddress
import socket

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints that a global-looking check might not catch everywhere.
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
_METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
# Deprecated IPv6 site-local addresses: Python 3.11's `ipaddress` counts them as global.
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
MAX_URL_LENGTH = 2048


class UnsafeURL(ValueError):
    """The URL may not be used as a webhook; the message says why."""


class NonPublicAddress(OSError):
    """At send time: the webhook's host is, or resolves to, an address we never call.

    An `OSError`, as the other ways a connection can fail; the sender turns it into a
    final failure: asking again would get the same answer."""

    def __init__(self, address: IPAddress) -> None:
        super().__init__(f"webhook address resolves to a non-public address {address}")
        self.address = address


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv4-mapped, 6to4 or Teredo IPv6 address, if any."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return None


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses that are not metadata services."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public_address(inner):
        return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and address not in _METADATA_ADDRESSES
        and not (isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL)
    )


def client_host(url: str | URL) -> str:
    """The host the HTTP client connects to: yarl's normalised (IDNA, NFKC) host, without a
    trailing dot. Raises `ValueError` for a URL yarl cannot parse."""
    parsed = url if isinstance(url, URL) else URL(url)
    return (parsed.raw_host or "").rstrip(".")


def address_literal(host: str) -> IPAddress | None:
    """The address if `host` is an IP literal (connected to without asking any resolver,
    and checked all the same), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refuse_non_public(addresses: list[IPAddress]) -> None:
    """The send-time rule, for the resolver and for literals alike: every address must be
    public. Raises `NonPublicAddress` naming the first one that is not."""
    for address in addresses:
        if not is_public_address(address):
            raise NonPublicAddress(address)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host name resolves to (a literal resolves to itself)."""
    literal = address_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnsafeURL(f"host {host!r} does not resolve") from exc
    addresses = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        addresses.append(ipaddress.ip_address(raw))
    return addresses


def check_addresses(host: str, addresses: list[IPAddress], *, allow_private: bool) -> None:
    if allow_private:
        return
    for address in addresses:
        if not is_public_address(address):
            raise UnsafeURL(f"host {host!r} resolves to a non-public address")


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """Validate a webhook URL for registration and return it. Raises `UnsafeURL`."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL("contains whitespace or control characters")
    try:
        # Parsed by yarl, as the webhook client will parse it when calling: one reading of
        # the host.
        parts = URL(url)
        host = client_host(parts)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeURL("scheme must be https")
    if scheme == "http" and not allow_private:
        raise UnsafeURL("scheme must be https (http only with RRMM_WEBHOOK_ALLOW_PRIVATE)")
    if parts.user is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not allowed; the payload is signed instead")
    if parts.fragment:
        raise UnsafeURL("a fragment is meaningless in a webhook URL")
    if not host:
        raise UnsafeURL("no host")
    if not allow_private and (host.lower() in _METADATA_HOSTS or host.lower() == "localhost"):
        raise UnsafeURL(f"host {host!r} is not a public host")
    addresses = resolve(host, port or (443 if scheme == "https" else 80))
    check_addresses(host, addresses, allow_private=allow_private)
    return url
