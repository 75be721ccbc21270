"""Outbound I/O: webhooks over our keep-alive HTTP/1.1 client, email over a few reused
SMTP connections. Each send returns a `SendResult`; nothing here touches the database."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any, cast

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from app.deliveries.http1 import (
    Http1Client,
    HttpError,
    InvalidTarget,
    Response,
    ServerDisconnected,
    Target,
    parse_target,
    request_bytes,
)
from app.netguard import NonPublicAddress, address_literal, refuse_non_public

# HTTP statuses worth another try; every other non-2xx is final.
RETRYABLE_HTTP = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class SendResult:
    delivery_id: int
    ok: bool
    retryable: bool = False
    error: str | None = None
    retry_after: float | None = None
    disable_webhook: bool = False


OnResult = Callable[[SendResult], None]
Wanted = Callable[[int], bool]


def not_wanted(delivery_id: int) -> SendResult:
    """A request not sent because its row is no longer wanted (see the recorder)."""
    return SendResult(
        delivery_id,
        ok=False,
        retryable=True,
        error="not sent: the incident ended or a newer version replaced this one",
    )


@dataclass(frozen=True)
class WebhookRequest:
    delivery_id: int
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class EmailRequest:
    delivery_id: int
    sender: str
    recipient: str
    message: bytes


def parse_retry_after(value: str | None, *, cap: float) -> float | None:
    """`Retry-After` as seconds (delta or HTTP date), capped; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), cap))


class WebhookSender:
    """One keep-alive HTTP/1.1 client (`app.deliveries.http1`) for the process's loop; a
    fixed pool of `concurrency` sender coroutines takes requests from one queue (no task
    and no semaphore wait per request)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float,
        total_timeout: float,
        concurrency: int,
        retry_after_cap: float,
    ) -> None:
        self.allow_private = allow_private
        # The total bounds the whole exchange, reading the answer included (a receiver
        # that drips its answer runs into it), so no per-read timer is rearmed per chunk.
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.concurrency = concurrency
        self.retry_after_cap = retry_after_cap

        self._http: Http1Client | None = None
        # URL text → what to call (or why not): a member's URL is parsed and checked once
        # per process, not once per delivery. Only the literal check is cached; names are
        # still resolved (and checked) each time a connection is made.
        self._targets: dict[str, Target | SendResult] = {}

    def _client(self) -> Http1Client:
        """One client for the life of the process's event loop: connections to a receiver
        are reused from one batch to the next. No cookies are kept at all: a receiver's
        Set-Cookie never reaches another member's receiver on the same host."""
        if self._http is None:
            self._http = Http1Client(
                allow_private=self.allow_private,
                connect_timeout=self.connect_timeout,
                total_timeout=self.total_timeout,
                max_idle=self.concurrency,
            )
        return self._http

    async def send_all(
        self,
        requests: Sequence[WebhookRequest],
        on_result: OnResult | None = None,
        wanted: Wanted | None = None,
    ) -> list[SendResult]:
        """Send every request; each result goes to `on_result` as soon as it is known.
        A request that `wanted` refuses when its turn comes is not sent."""
        if not requests:
            return []
        client = self._client()
        queue = deque(requests)
        results: list[SendResult] = []

        async def sender() -> None:
            while queue:
                request = queue.popleft()
                if wanted is not None and not wanted(request.delivery_id):
                    result = not_wanted(request.delivery_id)
                else:
                    result = await self._send(client, request)
                results.append(result)
                if on_result is not None:
                    on_result(result)

        await asyncio.gather(*(sender() for _ in range(min(self.concurrency, len(requests)))))
        return results

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _literal_address_refused(self, target: Target) -> NonPublicAddress | None:
        """A literal that is refused is refused for good: found out once, when the URL is
        first parsed (the client checks it again when connecting, as it does every name's
        addresses)."""
        if self.allow_private:
            return None
        literal = address_literal(target.origin.host)
        if literal is None:
            return None
        try:
            refuse_non_public([literal])
        except NonPublicAddress as refusal:
            return refusal
        return None

    def _target(self, request: WebhookRequest) -> Target | SendResult:
        """What to call, or the final failure it always leads to."""
        cached = self._targets.get(request.url)
        if cached is None:
            cached = self._parse_target(request.url)
            if len(self._targets) >= 100_000:
                self._targets.clear()
            self._targets[request.url] = cached
        if isinstance(cached, SendResult):
            return SendResult(request.delivery_id, ok=False, error=cached.error)
        return cached

    def _parse_target(self, text: str) -> Target | SendResult:
        try:
            # yarl normalises the host here (IDNA, full-width digits): what is checked below
            # and when connecting is what is connected to. Legacy spellings of an IPv4
            # address (2130706433, 127.1) are refused: final, not retried.
            target = parse_target(text)
        except InvalidTarget as exc:
            return SendResult(0, ok=False, error=f"invalid webhook URL: {exc}")
        refusal = self._literal_address_refused(target)
        if refusal is not None:
            return SendResult(0, ok=False, error=str(refusal))
        return target

    async def _send(self, client: Http1Client, request: WebhookRequest) -> SendResult:
        target = self._target(request)
        if isinstance(target, SendResult):
            return target
        try:
            data = request_bytes(target, request.headers, request.body)
        except ValueError as exc:
            return SendResult(
                request.delivery_id, ok=False, error=f"invalid webhook request: {exc}"
            )
        try:
            response = await client.post(target, data)
        except TimeoutError:
            return SendResult(request.delivery_id, ok=False, retryable=True, error="timeout")
        except NonPublicAddress as refused:
            # Final: the same name would resolve to the same refused address next time.
            return SendResult(request.delivery_id, ok=False, error=str(refused))
        except (HttpError, OSError) as exc:
            return SendResult(
                request.delivery_id,
                ok=False,
                retryable=True,
                error=f"connection error: {_error_name(exc)}",
            )
        return self._classify(request.delivery_id, response)

    def _classify(self, delivery_id: int, response: Response) -> SendResult:
        status = response.status
        if 200 <= status < 300:
            return SendResult(delivery_id, ok=True)
        if status == 410:
            return SendResult(
                delivery_id, ok=False, error="410 Gone: webhook disabled", disable_webhook=True
            )
        if 300 <= status < 400:
            return SendResult(delivery_id, ok=False, error=f"{status}: redirects are not followed")
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), cap=self.retry_after_cap
            )
        return SendResult(
            delivery_id,
            ok=False,
            retryable=status in RETRYABLE_HTTP,
            error=f"HTTP {status}",
            retry_after=retry_after,
        )


def _error_name(exc: HttpError | OSError) -> str:
    """The name a failed exchange is recorded under: the names the aiohttp-based sender
    wrote before this client (the ledger's `last_error` and whatever reads it keep their
    vocabulary). OSErrors come from resolving and connecting only: once connected, every
    failure is an `HttpError`."""
    if isinstance(exc, ServerDisconnected):
        return "ClientPayloadError" if exc.in_body else "ServerDisconnectedError"
    if isinstance(exc, HttpError):
        return "ClientResponseError"  # a malformed answer, or its headers too large
    if isinstance(exc, socket.gaierror):
        return "ClientConnectorDNSError"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "ClientConnectorCertificateError"
    if isinstance(exc, ssl.SSLError):
        return "ClientConnectorSSLError"
    return "ClientConnectorError"


STARTTLS_MODES = ("off", "opportunistic", "required")


class SmtpSecurityError(aiosmtplib.SMTPException):
    """The connection to the relay is not as safe as the settings require; raised before
    any credential or message is sent."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    timeout: float
    connections: int
    # `off` | `opportunistic` | `required` (a boolean reads as required / off).
    starttls: str | bool = "off"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    allow_plaintext_auth: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> SmtpSettings:
        """The SMTP part of the service's `Settings`."""
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            timeout=settings.smtp_timeout_seconds,
            connections=settings.smtp_connections,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=password,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            allow_plaintext_auth=settings.smtp_allow_plaintext_auth,
        )

    @property
    def starttls_mode(self) -> str:
        if isinstance(self.starttls, bool):
            return "required" if self.starttls else "off"
        if self.starttls not in STARTTLS_MODES:
            raise ValueError(f"unknown STARTTLS mode {self.starttls!r}")
        return self.starttls


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback literals: AUTH in clear there never leaves the
    machine."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying context (certificate chain and host name), trusting `ca_file` instead of
    the system's store when given (a private relay's own CA)."""
    return ssl.create_default_context(cafile=ca_file)


async def open_smtp(s: SmtpSettings) -> aiosmtplib.SMTP:
    """Connect, apply the STARTTLS mode, then log in if credentials are set. aiosmtplib
    would otherwise start TLS by itself whenever offered (`start_tls=None`); here the mode
    decides, and the password is only ever sent over a verified TLS connection, or in
    clear to a loopback relay, or when `allow_plaintext_auth` says so."""
    mode = s.starttls_mode
    context = tls_context(s.ca_file) if mode != "off" else None
    client = aiosmtplib.SMTP(
        hostname=s.host, port=s.port, timeout=s.timeout, start_tls=False, tls_context=context
    )
    await client.connect()
    try:
        await client.ehlo()
        offered = client.supports_extension("starttls")
        if mode == "required" and not offered:
            raise SmtpSecurityError("STARTTLS required but the relay does not offer it")
        if mode != "off" and offered:
            try:
                await client.starttls(tls_context=context)
            except ssl.SSLCertVerificationError as exc:
                raise SmtpSecurityError(
                    f"STARTTLS failed, the relay's certificate was not verified: {_short(exc)}"
                ) from exc
            except (ssl.SSLError, aiosmtplib.SMTPConnectError) as exc:
                raise SmtpSecurityError(f"STARTTLS failed: {_short(exc)}") from exc
            await client.ehlo()
        encrypted = client.get_transport_info("sslcontext") is not None
        if s.username and s.password:
            if not (encrypted or is_loopback_host(s.host) or s.allow_plaintext_auth):
                raise SmtpSecurityError(
                    "refusing SMTP AUTH over an unencrypted connection to a non-loopback "
                    "relay (set RRMM_SMTP_STARTTLS, or RRMM_SMTP_ALLOW_PLAINTEXT_AUTH)"
                )
            await client.login(s.username, s.password)
    except BaseException:
        client.close()
        raise
    return client


class _Replies(asyncio.Protocol):
    """SMTP replies as they arrive, in order, for pipelined commands: aiosmtplib's protocol
    keeps one reply waiter at a time and drops what arrives while none is pending, so it
    cannot take several replies to one write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > 64 * 1024:
            self._fail(aiosmtplib.SMTPResponseException(-1, "SMTP reply too long"))
            self.transport.abort()
            return
        self._parse()

    def _parse(self) -> None:
        """Every complete reply in the buffer (a reply is lines `250-…` ending `250 …`)."""
        start = 0
        lines: list[bytes] = []
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            lines.append(line[4:])
            if line[3:4] != b"-":
                try:
                    code = int(line[:3])
                except ValueError:
                    self._fail(aiosmtplib.SMTPResponseException(-1, "malformed SMTP reply"))
                    self.transport.abort()
                    return
                self._replies.append((code, b"\n".join(lines).decode("utf-8", "replace")))
                lines = []
                del buffer[:start]
                start = 0
        if self._replies:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
            self._waiter.exception()  # retrieved: nobody may be waiting any more

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the relay closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("connection lost")
        lost.__cause__ = exc
        self._fail(lost)

    @property
    def is_connected(self) -> bool:
        return self._lost is None and not self.transport.is_closing()

    async def replies(self, count: int, timeout: float) -> list[tuple[int, str]]:
        """The next `count` replies, each within `timeout` of the previous one."""
        got: list[tuple[int, str]] = []
        while len(got) < count:
            if self._replies:
                got.append(self._replies.popleft())
                continue
            if self._lost is not None:
                raise self._lost
            self._waiter = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(timeout):
                await self._waiter
        return got


_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")


class SmtpConnection:
    """One relay connection after `open_smtp` (greeting, EHLO, STARTTLS, AUTH done there by
    aiosmtplib), driven from then on by our own reply reader: with PIPELINING, MAIL FROM,
    RCPT TO and DATA go out in one write and the message in a second, so a message costs
    two round trips and two writes; without it, one command at a time as before."""

    def __init__(self, client: aiosmtplib.SMTP, timeout: float) -> None:
        protocol = client.protocol
        if protocol is None or protocol.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("not connected")
        transport = cast(asyncio.Transport, protocol.transport)
        self.timeout = timeout
        self.pipelining = client.supports_extension("pipelining")
        self.size = client.supports_extension("size")
        self._transport = transport
        self._replies = _Replies(transport)
        # From here on the socket's bytes come to us; aiosmtplib's client is not used again.
        transport.set_protocol(self._replies)

    @property
    def is_connected(self) -> bool:
        return self._replies.is_connected

    def close(self) -> None:
        self._transport.abort()

    async def quit(self) -> None:
        if not self.is_connected:
            self._transport.abort()
            return
        try:
            self._transport.write(b"QUIT\r\n")
            await self._replies.replies(1, 2)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            self._transport.close()

    async def _exchange(self, data: bytes, count: int) -> list[tuple[int, str]]:
        if not self.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self._transport.write(data)
        return await self._replies.replies(count, self.timeout)

    async def rset(self) -> None:
        (code, text), *_ = await self._exchange(b"RSET\r\n", 1)
        if code != 250:
            raise aiosmtplib.SMTPResponseException(code, text)

    async def send(self, request: EmailRequest) -> SendResult:
        """One transaction. A 4xx on MAIL FROM, DATA or the message raises (the caller
        starts a fresh session and the message is retried); a refused recipient or any
        5xx is this message's result."""
        delivery_id = request.delivery_id
        try:
            sender, recipient = (
                _envelope_address(request.sender),
                _envelope_address(request.recipient),
            )
        except ValueError as exc:
            return SendResult(delivery_id, ok=False, error=f"not sendable: {exc}")
        data = wire_message(request.message)
        size = b" SIZE=%d" % len(data) if self.size else b""
        mail = b"MAIL FROM:<" + sender + b">" + size + b"\r\n"
        rcpt = b"RCPT TO:<" + recipient + b">\r\n"
        if self.pipelining:
            replies = await self._exchange(mail + rcpt + b"DATA\r\n", 3)
        else:
            replies = await self._exchange(mail, 1)
            if replies[0][0] == 250:
                replies += await self._exchange(rcpt, 1)
                if replies[1][0] in (250, 251):
                    replies += await self._exchange(b"DATA\r\n", 1)
        (mail_code, mail_text), *rest = replies
        rcpt_code = rest[0][0] if rest else 0
        data_code, data_text = rest[1] if len(rest) > 1 else (0, "")
        if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
            # A relay that accepted DATA although the envelope was refused (RFC 2920 says
            # it must not): an empty message ends it, then the envelope is reset below.
            await self._exchange(b".\r\n", 1)
        if mail_code != 250:
            if mail_code < 500:
                raise aiosmtplib.SMTPResponseException(mail_code, mail_text)
            await self.rset()
            return SendResult(delivery_id, ok=False, error=f"SMTP {mail_code}: {_short(mail_text)}")
        if rcpt_code not in (250, 251):
            await self.rset()
            return SendResult(
                delivery_id,
                ok=False,
                retryable=400 <= rcpt_code < 500,
                error=f"SMTP {rcpt_code}: recipient refused",
            )
        if data_code != 354:
            if data_code < 500:
                raise aiosmtplib.SMTPResponseException(data_code, data_text)
            await self.rset()
            return SendResult(delivery_id, ok=False, error=f"SMTP {data_code}: {_short(data_text)}")
        ((code, text),) = await self._exchange(data, 1)
        if code == 250:
            return SendResult(delivery_id, ok=True)
        if code < 500:
            raise aiosmtplib.SMTPResponseException(code, text)
        return SendResult(delivery_id, ok=False, error=f"SMTP {code}: {_short(text)}")


def _envelope_address(address: str) -> bytes:
    """The bare address for MAIL FROM / RCPT TO; nothing that could end the command line
    or the path early (the member's address was validated when written, this is the last
    line of defence on the wire)."""
    _, parsed = parseaddr(address)
    parsed = parsed or address.strip()
    if not parsed or _UNSAFE_ADDRESS.search(parsed):
        raise ValueError("unsafe character in an email address")
    try:
        return parsed.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("non-ASCII email address (SMTPUTF8 is not used)") from None


def wire_message(message: bytes) -> bytes:
    """The DATA payload: CRLF line endings, lines starting with a dot doubled, and the
    end-of-data line. Messages built by `app.deliveries.email` are CRLF and never start a
    line with a dot already, so this is two counts and a search, no regex over the body
    (aiosmtplib's cost); anything else is normalised the slow way."""
    if message.count(b"\n") != message.count(b"\r\n") or message.count(b"\r") != message.count(
        b"\r\n"
    ):
        message = normalize_message_line_endings(message)
    if message.startswith(b".") or b"\n." in message:
        message = (b"." + message if message.startswith(b".") else message).replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


class SmtpSender:
    """A few SMTP connections, each reused for many messages, one message per member."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        # Connections kept open between batches (a relay's greeting and EHLO cost a round
        # trip or two each; its quota usually counts connections too).
        self._idle: list[SmtpConnection] = []

    async def close(self) -> None:
        while self._idle:
            await _close_quietly(self._idle.pop())

    async def send_all(
        self,
        requests: Sequence[EmailRequest],
        on_result: OnResult | None = None,
        wanted: Wanted | None = None,
    ) -> list[SendResult]:
        """Send every message; each result goes to `on_result` as soon as it is known.
        A message that `wanted` refuses when its turn comes is not sent."""
        if not requests:
            return []
        queue: deque[EmailRequest] = deque(requests)
        results: list[SendResult] = []

        def report(result: SendResult) -> None:
            results.append(result)
            if on_result is not None:
                on_result(result)

        workers = min(self.settings.connections, len(requests))
        await asyncio.gather(
            *(self._connection_loop(queue, report, wanted) for _ in range(workers))
        )
        # Every connection gave up (server down or hung): the rest wait for their retry
        # instead of each waiting out its own timeout.
        while queue:
            request = queue.popleft()
            report(
                SendResult(
                    request.delivery_id,
                    ok=False,
                    retryable=True,
                    error="SMTP server unavailable; not attempted",
                )
            )
        return results

    async def _connect(self) -> SmtpConnection:
        client = await open_smtp(self.settings)
        try:
            return SmtpConnection(client, self.settings.timeout)
        except BaseException:
            client.close()
            raise

    async def _connection_loop(
        self,
        queue: deque[EmailRequest],
        report: OnResult,
        wanted: Wanted | None,
    ) -> None:
        client: SmtpConnection | None = self._idle.pop() if self._idle else None
        reused = client is not None
        try:
            while queue:
                request = queue.popleft()
                if wanted is not None and not wanted(request.delivery_id):
                    report(not_wanted(request.delivery_id))
                    continue
                try:
                    if client is None or not client.is_connected:
                        client, reused = await self._connect(), False
                    report(await client.send(request))
                    reused = False
                except aiosmtplib.SMTPResponseException as exc:
                    # A 4xx for this transaction: retry it later, start a fresh session.
                    report(_smtp_failure(request.delivery_id, exc))
                    await _close_quietly(client)
                    client = None
                except asyncio.CancelledError:
                    # The batch ran out of time mid-transaction: this connection is spent.
                    if client is not None:
                        client.close()
                    client = None
                    raise
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    if reused:
                        # The relay closed an idle connection meanwhile: once more, afresh.
                        await _close_quietly(client)
                        client, reused = None, False
                        queue.append(request)
                        continue
                    # The connection itself failed: this loop stops (see send_all).
                    report(_smtp_failure(request.delivery_id, exc))
                    await _close_quietly(client)
                    client = None
                    return
        finally:
            if client is not None and client.is_connected:
                self._idle.append(client)


def _short(text: Any) -> str:
    return str(text).replace("\r", " ").replace("\n", " ")[:200]


def _smtp_failure(delivery_id: int, exc: BaseException) -> SendResult:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendResult(
            delivery_id,
            ok=False,
            retryable=exc.code < 500,
            error=f"SMTP {exc.code}: {_short(exc.message)}",
        )
    if isinstance(exc, SmtpSecurityError):
        return SendResult(delivery_id, ok=False, retryable=True, error=_short(exc))
    name = "timeout" if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError) else "error"
    return SendResult(
        delivery_id, ok=False, retryable=True, error=f"SMTP connection {name}: {type(exc).__name__}"
    )


async def _close_quietly(client: SmtpConnection | None) -> None:
    if client is not None:
        await client.quit()
