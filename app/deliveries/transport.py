"""Outbound I/O: webhooks over a pooled aiohttp session, email over a few reused SMTP
connections. Each send returns a `SendResult`; nothing here touches the database."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
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

    async def send_all(self, requests: Sequence[WebhookRequest]) -> list[SendResult]:
        if not requests:
            return []
        session, gate = self._client()

        async def one(request: WebhookRequest) -> SendResult:
            async with gate:
                return await self._send(session, request)

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


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    timeout: float
    connections: int
    starttls: bool = False
    username: str | None = None
    password: str | None = None


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

    async def send_all(self, requests: Sequence[EmailRequest]) -> list[SendResult]:
        if not requests:
            return []
        queue: asyncio.Queue[EmailRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        results: list[SendResult] = []
        workers = min(self.settings.connections, len(requests))
        await asyncio.gather(*(self._connection_loop(queue, results) for _ in range(workers)))
        # Every connection gave up (server down or hung): the rest wait for their retry
        # instead of each waiting out its own timeout.
        while not queue.empty():
            request = queue.get_nowait()
            results.append(
                SendResult(
                    request.delivery_id,
                    ok=False,
                    retryable=True,
                    error="SMTP server unavailable; not attempted",
                )
            )
        return results

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout, start_tls=s.starttls or None
        )
        await client.connect()
        if s.username and s.password:
            await client.login(s.username, s.password)
        return client

    async def _connection_loop(
        self, queue: asyncio.Queue[EmailRequest], results: list[SendResult]
    ) -> None:
        client: aiosmtplib.SMTP | None = self._idle.pop() if self._idle else None
        reused = client is not None
        try:
            while not queue.empty():
                request = queue.get_nowait()
                try:
                    if client is None or not client.is_connected:
                        client, reused = await self._connect(), False
                    results.append(await self._send(client, request))
                    reused = False
                except aiosmtplib.SMTPResponseException as exc:
                    # A 4xx for this transaction: retry it later, start a fresh session.
                    results.append(_smtp_failure(request.delivery_id, exc))
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
                    results.append(_smtp_failure(request.delivery_id, exc))
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
