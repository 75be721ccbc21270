"""Outbound I/O: webhooks over a pooled aiohttp session, email over a few reused SMTP
connections. Each send returns a `SendResult`; nothing here touches the database."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import aiosmtplib
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from app.netguard import NonPublicAddress, address_literal, client_host, refuse_non_public

# How much of a receiver's answer we read: enough for an error message, never 50 MB.
MAX_RESPONSE_BYTES = 16 * 1024
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


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the system, then refuses if any address is not public. It is the
    connector's resolver, so the addresses checked are the ones connected to (DNS
    rebinding: the address is checked when we connect, not only when the URL was
    registered, and there is no second lookup in between)."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        refuse_non_public([ipaddress.ip_address(result["host"]) for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


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


async def _read_capped(response: aiohttp.ClientResponse) -> None:
    """Read the answer to its end, but no more than MAX_RESPONSE_BYTES: an answer that
    never ends runs into the timeout (not sent), a huge one is cut off."""
    received = 0
    while received < MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES - received)
        if not chunk:
            return
        received += len(chunk)


class WebhookSender:
    """One pooled session per batch; `concurrency` requests in flight at most."""

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
        self.timeout = aiohttp.ClientTimeout(
            total=total_timeout, connect=connect_timeout, sock_read=total_timeout
        )
        self.concurrency = concurrency
        self.retry_after_cap = retry_after_cap

        self._session: aiohttp.ClientSession | None = None
        self._gate: asyncio.Semaphore | None = None

    def _client(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        """One pooled session for the life of the process's event loop: connections to a
        receiver are reused from one batch to the next."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                limit_per_host=self.concurrency,
                resolver=None if self.allow_private else PublicOnlyResolver(),
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False
            )
            self._gate = asyncio.Semaphore(self.concurrency)
        assert self._gate is not None
        return self._session, self._gate

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
        session, gate = self._client()

        async def one(request: WebhookRequest) -> SendResult:
            async with gate:
                if wanted is not None and not wanted(request.delivery_id):
                    result = not_wanted(request.delivery_id)
                else:
                    result = await self._send(session, request)
            if on_result is not None:
                on_result(result)
            return result

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _literal_address_refused(self, url: URL) -> NonPublicAddress | None:
        """aiohttp connects to an IP literal without asking the resolver, so literals are
        checked here, on the host of the very URL object the request is made with."""
        if self.allow_private:
            return None
        literal = address_literal(client_host(url))
        if literal is None:
            return None
        try:
            refuse_non_public([literal])
        except NonPublicAddress as refusal:
            return refusal
        return None

    async def _send(self, session: aiohttp.ClientSession, request: WebhookRequest) -> SendResult:
        try:
            # yarl normalises the host here (IDNA, full-width digits): what is checked below
            # and by the resolver is what aiohttp connects to.
            url = URL(request.url)
        except ValueError as exc:
            return SendResult(request.delivery_id, ok=False, error=f"invalid webhook URL: {exc}")
        refusal = self._literal_address_refused(url)
        if refusal is not None:
            return SendResult(request.delivery_id, ok=False, error=str(refusal))
        try:
            async with session.post(
                url, data=request.body, headers=request.headers, allow_redirects=False
            ) as response:
                await _read_capped(response)
                return self._classify(request.delivery_id, response)
        except TimeoutError:
            return SendResult(request.delivery_id, ok=False, retryable=True, error="timeout")
        except aiohttp.InvalidURL as exc:
            # Final too: e.g. 2130706433 or 127.1, legacy spellings of an IPv4 address that
            # aiohttp refuses to connect to at all.
            return SendResult(request.delivery_id, ok=False, error=f"invalid webhook URL: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            refused = _refusal_in(exc)
            if refused is not None:
                # Final: the same name would resolve to the same refused address next time.
                return SendResult(request.delivery_id, ok=False, error=str(refused))
            return SendResult(
                request.delivery_id,
                ok=False,
                retryable=True,
                error=f"connection error: {type(exc).__name__}",
            )

    def _classify(self, delivery_id: int, response: aiohttp.ClientResponse) -> SendResult:
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
                response.headers.get("Retry-After"), cap=self.retry_after_cap
            )
        return SendResult(
            delivery_id,
            ok=False,
            retryable=status in RETRYABLE_HTTP,
            error=f"HTTP {status}",
            retry_after=retry_after,
        )


def _refusal_in(exc: BaseException) -> NonPublicAddress | None:
    """The resolver's refusal inside aiohttp's connector error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NonPublicAddress):
            return seen
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
            seen.os_error, NonPublicAddress
        ):
            return seen.os_error
        seen = seen.__cause__
    return None


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


class SmtpSender:
    """A few SMTP connections, each reused for many messages, one message per member."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        # Connections kept open between batches (a relay's greeting and EHLO cost a round
        # trip or two each; its quota usually counts connections too).
        self._idle: list[aiosmtplib.SMTP] = []

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
        queue: asyncio.Queue[EmailRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
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
        while not queue.empty():
            request = queue.get_nowait()
            report(
                SendResult(
                    request.delivery_id,
                    ok=False,
                    retryable=True,
                    error="SMTP server unavailable; not attempted",
                )
            )
        return results

    async def _connect(self) -> aiosmtplib.SMTP:
        return await open_smtp(self.settings)

    async def _connection_loop(
        self,
        queue: asyncio.Queue[EmailRequest],
        report: OnResult,
        wanted: Wanted | None,
    ) -> None:
        client: aiosmtplib.SMTP | None = self._idle.pop() if self._idle else None
        reused = client is not None
        try:
            while not queue.empty():
                request = queue.get_nowait()
                if wanted is not None and not wanted(request.delivery_id):
                    report(not_wanted(request.delivery_id))
                    continue
                try:
                    if client is None or not client.is_connected:
                        client, reused = await self._connect(), False
                    report(await self._send(client, request))
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
                        queue.put_nowait(request)
                        continue
                    # The connection itself failed: this loop stops (see send_all).
                    report(_smtp_failure(request.delivery_id, exc))
                    await _close_quietly(client)
                    client = None
                    return
        finally:
            if client is not None and client.is_connected:
                self._idle.append(client)

    async def _send(self, client: aiosmtplib.SMTP, request: EmailRequest) -> SendResult:
        try:
            errors, _ = await asyncio.wait_for(
                client.sendmail(request.sender, [request.recipient], request.message),
                timeout=self.settings.timeout * 3,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code = refused.code if refused is not None else 550
            return SendResult(
                request.delivery_id,
                ok=False,
                retryable=400 <= code < 500,
                error=f"SMTP {code}: recipient refused",
            )
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code < 500:
                raise  # 4xx on the transaction: the connection is reset by the caller
            await client.rset()
            return SendResult(
                request.delivery_id, ok=False, error=f"SMTP {exc.code}: {_short(exc.message)}"
            )
        if errors:
            return SendResult(request.delivery_id, ok=False, retryable=True, error="refused")
        return SendResult(request.delivery_id, ok=True)


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


async def _close_quietly(client: aiosmtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), timeout=2)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()
