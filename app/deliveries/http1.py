"""A lean HTTP/1.1 client for webhook POSTs: `asyncio.Protocol` connections, responses
parsed by httptools (llhttp), kept alive in a pool per (scheme, host, port).

What it does not do is deliberate: no redirects, no cookies, no decompression, no proxies,
no HTTP/2. What it does keep is what a webhook sender needs against receivers it does not
trust: the address guard at connect time (every address the host resolves to, literals
too), TLS with the default verifying context (certificate chain, host name, SNI), a connect
timeout and a total timeout per request, and caps on how much of an answer is read.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import httptools
from yarl import URL

from app.netguard import address_literal, client_host, refuse_non_public

# How much of a receiver's answer we read: enough for an error message, never 50 MB.
MAX_RESPONSE_BYTES = 16 * 1024
# The status line and the headers together; a receiver sending more is not a webhook
# receiver we want to keep talking to.
MAX_HEADER_BYTES = 32 * 1024
# An idle pooled connection older than this is closed rather than reused: receivers close
# idle connections after 5-75 s, and one found closed costs a retry.
KEEPALIVE_SECONDS = 15.0

_DEFAULT_PORTS = {"http": 80, "https": 443}
Sockaddr = tuple[Any, ...]


class HttpError(Exception):
    """The exchange failed after a connection was made; the class name is the error text."""


class ServerDisconnected(HttpError):
    """The connection closed before the whole answer came. `before_response`: not one byte
    of it had arrived (on a pooled connection: the receiver had closed it while idle);
    `in_body`: the headers had come, the body was cut short."""

    def __init__(self, *, before_response: bool, in_body: bool = False) -> None:
        super().__init__("the server closed the connection")
        self.before_response = before_response
        self.in_body = in_body


class MalformedResponse(HttpError):
    """The answer is not HTTP/1.x as llhttp reads it."""


class ResponseHeadersTooLarge(HttpError):
    """The status line and headers are longer than MAX_HEADER_BYTES."""


class InvalidTarget(ValueError):
    """The URL cannot be called (not parsed, no host, not http(s), a legacy IPv4 form)."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # as connected to: yarl's normalised host (IDNA, NFKC), no trailing dot
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL, ready to be called many times: the pool key and the request line and
    Host header as bytes."""

    origin: Origin
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: …\r\n" (+ Authorization from userinfo)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    truncated: bool  # the body was longer than MAX_RESPONSE_BYTES and was not read on


def _is_legacy_ipv4(host: str) -> bool:
    """`2130706433`, `127.1`, `0177.0.0.1`: digits and dots, but not a dotted quad. The
    system resolver maps these onto addresses; they are refused before any lookup."""
    if ":" in host or not host.replace(".", "").isdigit():
        return False
    parts = host.split(".")
    return len(parts) != 4 or not all(
        1 <= len(part) <= 3
        and part.isascii()
        and part.isdigit()
        and (part == "0" or not part.startswith("0"))
        and int(part) <= 255
        for part in parts
    )


def parse_target(text: str) -> Target:
    """Parse a webhook URL once into what every request to it needs. Raises `InvalidTarget`."""
    try:
        url = URL(text)
        host = client_host(url)
        port = url.port
    except ValueError as exc:
        raise InvalidTarget(str(exc)) from exc
    scheme = url.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidTarget(f"{scheme or 'no'} scheme: only http and https are called")
    if not host:
        raise InvalidTarget("no host")
    if _is_legacy_ipv4(host):
        raise InvalidTarget(f"{host} is not a canonical IPv4 address")
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    authority = url.host_port_subcomponent or host
    path = url.raw_path_qs or "/"
    lines = [f"POST {path} HTTP/1.1", f"Host: {authority}"]
    if url.raw_user is not None or url.raw_password is not None:
        # Never accepted by the API; a row written past it keeps working as it did.
        credentials = f"{url.user or ''}:{url.password or ''}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode('ascii')}")
    head = "\r\n".join(lines) + "\r\n"
    if "\0" in head or head.count("\r") != len(lines) or head.count("\n") != len(lines):
        raise InvalidTarget("control characters in the URL")
    return Target(Origin(scheme, host, port), head.encode("utf-8"))


def request_bytes(target: Target, headers: dict[str, str], body: bytes) -> bytes:
    """The whole request, for one write. Raises `ValueError` on a header name or value that
    could end its line early (header injection)."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if text.count("\r") != len(headers) or text.count("\n") != len(headers) or "\0" in text:
        raise ValueError("a header name or value contains CR, LF or NUL")
    return b"".join(
        (target.head, text.encode("utf-8"), b"Content-Length: %d\r\n\r\n" % len(body), body)
    )


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its response parser; one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._reset()

    def _reset(self) -> None:
        self._received = 0
        self._head_bytes = 0  # status and headers as parsed
        self._raw_head = 0  # bytes received while the headers were not complete
        self._headers_done = False
        self._complete = False
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._keep_alive = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = 0
        self._error: HttpError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 (the cause does not change the outcome)
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:
            # A body delimited by the end of the connection (neither length nor chunks).
            self._finish(truncated=False)
        else:
            waiter.set_exception(
                ServerDisconnected(before_response=self._received == 0, in_body=self._headers_done)
            )

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nothing was asked (or the answer is already taken): not a connection to reuse.
            self.abort()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._keep_alive = False
            if not self._complete and self._error is None:
                self._error = MalformedResponse(str(exc) or type(exc).__name__)
        if self._error is None and not self._headers_done:
            self._raw_head += len(data)
            if self._raw_head > MAX_HEADER_BYTES:
                # An endless header line: llhttp never calls back, httptools buffers it.
                self._error = ResponseHeadersTooLarge()
        if self._error is not None:
            waiter.set_exception(self._error)
            self.abort()
        elif self._complete:
            self._finish(truncated=False)
        elif self._body >= MAX_RESPONSE_BYTES:
            self._finish(truncated=True)

    # httptools callbacks (after the answer is complete, whatever follows in the same data
    # is not read: the connection is then not reused)

    def on_message_begin(self) -> None:
        if self._complete:
            self._keep_alive = False

    def on_status(self, status: bytes) -> None:
        if not self._complete:
            self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes | None) -> None:
        if self._complete:
            return
        value = value or b""
        self._count_head(len(name) + len(value) + 4)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        self._headers_done = True
        self._status = self._parser.get_status_code()
        self._framed = "content-length" in self._headers or (
            "chunked" in self._headers.get("transfer-encoding", "").lower()
        )

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._body += len(body)

    def on_message_complete(self) -> None:
        if self._complete:
            return
        if 100 <= self._status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._reset()
            self._received = 1
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES and self._error is None:
            self._error = ResponseHeadersTooLarge()

    # the client's side

    def _finish(self, *, truncated: bool) -> None:
        waiter = self._waiter
        assert waiter is not None
        waiter.set_result(Response(self._status, self._headers, truncated))
        if truncated or not self._keep_alive:
            self.abort()

    @property
    def reusable(self) -> bool:
        """Idle, open, and its last answer was read to its end with keep-alive."""
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self._keep_alive
            and self._complete
        )

    def request(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Client:
    """Keep-alive connection pools per origin for one event loop.

    `post` bounds the whole exchange by `total_timeout` (getting a connection, writing,
    reading the answer) and getting a new connection (resolving, connecting, the TLS
    handshake) by `connect_timeout`. Idle connections: at most `max_idle` over all origins
    (the oldest closed first), none older than KEEPALIVE_SECONDS."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float,
        total_timeout: float,
        max_idle: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_idle = max_idle
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_order: OrderedDict[_Connection, None] = OrderedDict()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, target: Target, data: bytes) -> Response:
        """Send `data` (a whole request: `target.head`, headers, the blank line, the body)
        and read the answer. A pooled connection the receiver had closed while idle is
        found out before any answer byte; the request then goes once more, on a new one."""
        async with asyncio.timeout(self.total_timeout):
            connection = self._take_idle(target.origin)
            if connection is not None:
                try:
                    return await self._exchange(connection, data)
                except ServerDisconnected as exc:
                    if not exc.before_response:
                        raise
            return await self._exchange(await self._connect(target.origin), data)

    async def close(self) -> None:
        for connection in list(self._idle_order):
            connection.abort()
        self._idle.clear()
        self._idle_order.clear()

    async def _exchange(self, connection: _Connection, data: bytes) -> Response:
        try:
            response = await connection.request(data)
        except BaseException:
            connection.abort()
            raise
        if connection.reusable:
            self._put_idle(connection)
        return response

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_kept = time.monotonic() - KEEPALIVE_SECONDS
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            del self._idle_order[connection]
            if connection.idle_since < oldest_kept:
                # It and every older one left in the list: past their keep-alive.
                for stale in [connection, *idle]:
                    self._idle_order.pop(stale, None)
                    stale.abort()
                idle.clear()
                return None
            if connection.reusable:
                return connection
            connection.abort()
        return None

    def _put_idle(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._idle_order[connection] = None
        while len(self._idle_order) > self.max_idle:
            oldest, _ = self._idle_order.popitem(last=False)
            self._idle[oldest.origin].remove(oldest)
            oldest.abort()

    async def _connect(self, origin: Origin) -> _Connection:
        async with asyncio.timeout(self.connect_timeout):
            loop = asyncio.get_running_loop()
            error: OSError | None = None
            for family, sockaddr in await self._resolve(loop, origin):
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, sockaddr)
                    return await self._open(loop, sock, origin)
                except OSError as exc:
                    sock.close()
                    error = exc
                except BaseException:
                    sock.close()
                    raise
            raise error or OSError(f"{origin.host} resolved to no address")

    async def _open(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, origin: Origin
    ) -> _Connection:
        """The connection on a connected socket, after the TLS handshake for https."""
        connection = _Connection(origin)
        tls = origin.scheme == "https"
        await loop.create_connection(
            lambda: connection,
            sock=sock,
            ssl=self.ssl_context if tls else None,
            server_hostname=origin.host if tls else None,
        )
        return connection

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop, origin: Origin
    ) -> list[tuple[int, Sockaddr]]:
        """Every address the host resolves to, checked before any is connected to (DNS
        rebinding: these are the addresses used, there is no second lookup). A literal is
        its own address, checked the same way."""
        literal = address_literal(origin.host)
        infos: list[tuple[int, Sockaddr]]
        if literal is None:
            resolved = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
            infos = [(family, sockaddr) for family, _, _, _, sockaddr in resolved]
        elif isinstance(literal, ipaddress.IPv6Address):
            infos = [(socket.AF_INET6, (str(literal), origin.port, 0, 0))]
        else:
            infos = [(socket.AF_INET, (str(literal), origin.port))]
        if not self.allow_private:
            refuse_non_public(
                [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for _, sockaddr in infos]
            )
        return infos
