"""The fan-out benchmark's two baselines: what sending the same messages to the same sinks
costs without the service (no database, no queue, no Celery, no message building).

    python -m bench.clients library --webhook-base URL --smtp-port P --members N \\
        --webhook-concurrency C --smtp-connections K
    python -m bench.clients floor ...

- `library`: the general-purpose client libraries (aiosmtplib, aiohttp), driven by a fixed
  pool of coroutines (K SMTP connections, C webhook senders on one pooled session).
- `floor`: the protocol's own cost, clients of this file on asyncio protocols: SMTP with
  the whole transaction in one write per message (MAIL, RCPT, DATA, the dot-stuffed body,
  the dot), replies counted and checked; HTTP/1.1 with keep-alive, one write per request.
  The SMTP floor sends the body without waiting for the 354 (RFC 2920 asks a client to
  wait): the sink tolerates it, and it is the lower bound a pipelining client approaches.

Both send the same pre-built bytes (one email, one webhook body; per message only the
recipient and the Message-ID / webhook-id are spliced in, which is what the worker varies
too), emails first then webhooks, each with the same concurrency as the worker. Runs in a
process of its own (the orchestrator starts it), so its CPU (getrusage, around each phase,
after the imports and the building) is the client's alone. Prints one JSON object.
Imports nothing from the service: the transport under test must not be its own baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any, cast

import aiohttp
import aiosmtplib

from bench.sinks import header_value

SENDER = "alerts@rrmm.invalid"
ID_MARK = b"@@ID@@"
TIMEOUT = 60.0

_TEXT_FR = (
    "Une caricature publiée ce matin circule largement et les réactions s'intensifient en "
    "ligne. Merci d'éviter d'amplifier l'image elle-même ; privilégiez un contexte calme et "
    "factuel et les voix du dialogue.\n\nNous partagerons une mise à jour d'ici deux "
    "heures. "
) * 2 + (
    "\n\n- La liberté d'expression et le respect des croyances ne s'opposent pas.\n"
    "- Rapportez des faits, pas des rumeurs ; citez des sources vérifiées.\n"
    "- Donnez la parole aux voix du dialogue de toutes les communautés.\n"
)


def email_template() -> tuple[bytes, bytes]:
    """One multipart/alternative message like the service's (text + HTML, base64), CRLF
    and dot-stuffed, split around its Message-ID's variable part."""
    message = EmailMessage(policy=SMTP)
    message["From"] = f"RRMM <{SENDER}>"
    message["To"] = "member@bench.example.org"
    message["Subject"] = "Tensions après la publication de la caricature"
    message["Message-ID"] = f"<rrmm.delivery.{ID_MARK.decode()}@rrmm.invalid>"
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = "fr"
    message.set_content(_TEXT_FR + "\n\nhttp://127.0.0.1:8000/ack/" + "x" * 120, cte="base64")
    html = "<html><body><p>" + _TEXT_FR.replace("\n", "<br>") + "</p></body></html>"
    message.add_alternative(html * 3, subtype="html", cte="base64")
    raw = message.as_bytes()
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    raw = raw.replace(b"\r\n.", b"\r\n..")
    prefix, suffix = raw.split(ID_MARK)
    return prefix, suffix


def webhook_body() -> bytes:
    return json.dumps(
        {
            "type": "incident.declared",
            "timestamp": "2026-01-15T10:00:00Z",
            "data": {
                "incident": {
                    "id": str(uuid.uuid4()),
                    "reference": "RRMM-2026-0001",
                    "title": "Tension after the cartoon publication",
                    "severity": "severe",
                    "urgency": "immediate",
                    "mode": "exercise",
                    "countries": ["MA"],
                    "themes": ["religious-hatred"],
                    "declared_at": "2026-01-15T10:00:00+00:00",
                },
                "briefing": {"language": "fr", "subject": "Tensions", "body": _TEXT_FR},
                "ack": {
                    "url": "http://127.0.0.1:8000/v1/acks",
                    "page": "http://127.0.0.1:8000/ack/" + "x" * 120,
                    "token": "x" * 120,
                    "deadline": None,
                    "responses": ["acknowledged", "will_engage", "unavailable"],
                },
            },
        },
        ensure_ascii=False,
    ).encode()


def webhook_headers(i: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "RRMM-Webhooks/1",
        "webhook-id": f"bench_{i}",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1," + "A" * 44,
    }


class Work:
    """The message numbers, shared by a fixed pool of senders."""

    def __init__(self, n: int) -> None:
        self.next = 0
        self.n = n
        self.ok = 0
        self.failed = 0

    def take(self) -> int | None:
        if self.next >= self.n:
            return None
        self.next += 1
        return self.next - 1


# ----------------------------------------------------------------------------- library


async def library_emails(port: int, n: int, connections: int) -> Work:
    prefix, suffix = email_template()
    work = Work(n)

    async def sender() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=TIMEOUT)
        await client.connect()
        try:
            while (i := work.take()) is not None:
                message = b"".join((prefix, str(i).encode(), suffix))
                errors, _ = await client.sendmail(SENDER, [f"member{i}@bench.example.org"], message)
                if errors:
                    work.failed += 1
                else:
                    work.ok += 1
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()

    await asyncio.gather(*(sender() for _ in range(min(connections, n))))
    return work


async def library_webhooks(base: str, n: int, concurrency: int) -> Work:
    body = webhook_body()
    work = Work(n)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def sender() -> None:
            while (i := work.take()) is not None:
                async with session.post(
                    f"{base}/library/{i}", data=body, headers=webhook_headers(i)
                ) as response:
                    await response.content.read(16 * 1024)
                    if response.status == 200:
                        work.ok += 1
                    else:
                        work.failed += 1

        await asyncio.gather(*(sender() for _ in range(min(concurrency, n))))
    return work


# ----------------------------------------------------------------------------- floor


class _Replies(asyncio.Protocol):
    """Collects SMTP reply codes (final lines only) or HTTP responses, for one awaiter."""

    def __init__(self, http: bool) -> None:
        self.http = http
        self.buffer = bytearray()
        self.codes: list[int] = []
        self.wanted = 0
        self.waiter: asyncio.Future[list[int]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.http:
            self._http_responses()
        else:
            self._smtp_replies()
        if self.waiter is not None and len(self.codes) >= self.wanted and not self.waiter.done():
            codes, self.codes = self.codes[: self.wanted], self.codes[self.wanted :]
            self.waiter.set_result(codes)

    def _smtp_replies(self) -> None:
        start = 0
        while (end := self.buffer.find(b"\r\n", start)) >= 0:
            if end - start >= 4 and self.buffer[start + 3] != 0x2D:  # not "250-..."
                self.codes.append(int(self.buffer[start : start + 3]))
            start = end + 2
        del self.buffer[:start]

    def _http_responses(self) -> None:
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[: head_end + 2])
            length = int(header_value(head, b"content-length:") or 0)
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            self.codes.append(int(head[9:12]))
            del self.buffer[:total]

    def send(self, data: bytes, replies: int) -> Awaitable[list[int]]:
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.wanted = replies
        self.transport.write(data)
        return self.waiter


async def _connect(port: int, http: bool) -> _Replies:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: _Replies(http), "127.0.0.1", port)
    return protocol


async def floor_emails(port: int, n: int, connections: int) -> Work:
    prefix, suffix = email_template()
    work = Work(n)
    envelope = b"MAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<member"

    async def sender() -> None:
        peer = await _connect(port, http=False)
        peer.wanted = 1
        peer.waiter = asyncio.get_running_loop().create_future()
        greeting = await asyncio.wait_for(peer.waiter, TIMEOUT)
        ehlo = await asyncio.wait_for(peer.send(b"EHLO bench.invalid\r\n", 1), TIMEOUT)
        if greeting != [220] or ehlo != [250]:
            raise ConnectionError(f"unexpected greeting {greeting} / EHLO {ehlo}")
        try:
            while (i := work.take()) is not None:
                number = str(i).encode()
                transaction = b"".join(
                    (
                        envelope,
                        number,
                        b"@bench.example.org>\r\nDATA\r\n",
                        prefix,
                        number,
                        suffix,
                        b".\r\n",
                    )
                )
                codes = await asyncio.wait_for(peer.send(transaction, 4), TIMEOUT)
                if codes == [250, 250, 354, 250]:
                    work.ok += 1
                else:
                    work.failed += 1
            await asyncio.wait_for(peer.send(b"QUIT\r\n", 1), TIMEOUT)
        finally:
            peer.transport.close()

    await asyncio.gather(*(sender() for _ in range(min(connections, n))))
    return work


async def floor_webhooks(base: str, n: int, concurrency: int) -> Work:
    body = webhook_body()
    port = int(base.rsplit(":", 1)[1].split("/", 1)[0])
    work = Work(n)
    # Everything but the number in the path and in webhook-id is the same for every request.
    head = [
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "User-Agent: RRMM-Webhooks/1",
        f"Webhook-Timestamp: {int(time.time())}",
        "Webhook-Signature: v1," + "A" * 44,
        f"Content-Length: {len(body)}",
    ]
    after_id = ("\r\n" + "\r\n".join(head) + "\r\n\r\n").encode() + body

    async def sender() -> None:
        peer = await _connect(port, http=True)
        try:
            while (i := work.take()) is not None:
                number = str(i).encode()
                request = b"".join(
                    (b"POST /floor/", number, b" HTTP/1.1\r\nWebhook-Id: bench_", number, after_id)
                )
                codes = await asyncio.wait_for(peer.send(request, 1), TIMEOUT)
                if codes == [200]:
                    work.ok += 1
                else:
                    work.failed += 1
        finally:
            peer.transport.close()

    await asyncio.gather(*(sender() for _ in range(min(concurrency, n))))
    return work


# ----------------------------------------------------------------------------- main

SenderFactory = Callable[[], Coroutine[Any, Any, Work]]


def measure(factory: SenderFactory) -> dict[str, Any]:
    """One channel: wall time and this process's CPU (user + system) around it."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    work: Work = asyncio.run(factory())
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "ok": work.ok,
        "failed": work.failed,
        "started_at": started,
        "seconds": round(ended - started, 3),
        "cpu_seconds": round(cpu, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clients")
    parser.add_argument("kind", choices=("library", "floor"))
    parser.add_argument("--webhook-base", required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--webhook-concurrency", type=int, required=True)
    parser.add_argument("--smtp-connections", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="uvloop instead of asyncio's")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    n = args.members
    if args.kind == "library":
        emails = measure(lambda: library_emails(args.smtp_port, n, args.smtp_connections))
        webhooks = measure(lambda: library_webhooks(args.webhook_base, n, args.webhook_concurrency))
    else:
        emails = measure(lambda: floor_emails(args.smtp_port, n, args.smtp_connections))
        webhooks = measure(lambda: floor_webhooks(args.webhook_base, n, args.webhook_concurrency))
    print(json.dumps({"kind": args.kind, "email": emails, "webhook": webhooks}))


if __name__ == "__main__":
    main()
