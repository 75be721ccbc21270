"""The two senders on their own, against real peers on 127.0.0.1: a small SMTP relay of the
test's own that can insist on pipelining (it answers MAIL FROM only once RCPT TO and DATA
are in), aiosmtpd offering PIPELINING, and aiohttp receivers that set cookies or count the
requests in flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from app.deliveries.transport import (
    EmailRequest,
    SendResult,
    SmtpSender,
    SmtpSettings,
    WebhookRequest,
    WebhookSender,
    wire_message,
)
from app.netutil import free_port
from tests.support.sinks import SmtpSink, ThreadedHttpServer

# ---------------------------------------------------------------------------- SMTP relay


@dataclass
class Transaction:
    sender: str
    recipient: str
    data: bytes  # as received, dot-stuffing undone, without the end-of-data line


@dataclass
class _Relay(asyncio.Protocol):
    owner: ScriptedRelay
    transport: asyncio.Transport | None = None
    buffer: bytes = b""
    in_data: bool = False
    data: list[bytes] = field(default_factory=list)
    sender: str = ""
    recipient: str = ""
    mail_reply: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connections += 1
        transport.write(b"220 scripted relay\r\n")

    def _data_line(self, line: bytes) -> list[bytes]:
        """Take one line of a message; at its end, the reply to the whole message."""
        if line != b".":
            # Undo dot-stuffing (RFC 5321 4.5.2).
            self.data.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            return []
        self.in_data = False
        self.owner.transactions.append(
            Transaction(self.sender, self.recipient, b"".join(self.data))
        )
        self.data = []
        return [self.owner.reply(self.sender, "end", b"250 queued")]

    def data_received(self, chunk: bytes) -> None:
        self.buffer += chunk
        replies: list[bytes] = []
        commands_in_chunk = 0
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if self.in_data:
                replies.extend(self._data_line(line))
                continue
            commands_in_chunk += 1
            verb = line[:4].upper()
            if verb == b"EHLO":
                offered = b"250-PIPELINING\r\n" if self.owner.pipelining else b""
                replies.append(b"250-relay\r\n" + offered + b"250 8BITMIME\r\n")
            elif verb == b"MAIL":
                self.sender = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                self.mail_reply = self.owner.reply(self.sender, "mail", b"250 ok")
                if self.owner.pipelining and self.owner.insist:
                    # Not a word until the rest of the envelope is in: only a client that
                    # pipelines gets an answer at all.
                    continue
                replies.append(self.mail_reply)
            elif verb == b"RCPT":
                self.recipient = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                rcpt = self.owner.reply(self.recipient, "rcpt", b"250 ok")
                if self.owner.pipelining and self.owner.insist:
                    self.mail_reply += rcpt
                    continue
                replies.append(rcpt)
            elif verb == b"DATA":
                envelope = self.mail_reply if self.owner.pipelining and self.owner.insist else b""
                mail_ok = envelope.startswith(b"250") or not envelope
                accepted = b"250 ok\r\n250 ok" in envelope or not envelope
                if self.owner.pipelining and self.owner.insist and not (mail_ok and accepted):
                    replies.append(envelope + b"554 no valid recipients\r\n")
                else:
                    replies.append(envelope + self.owner.reply(self.sender, "data", b"354 go"))
                    self.in_data = replies[-1].endswith(b"354 go\r\n")
            elif verb == b"RSET":
                replies.append(b"250 reset\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 bye\r\n")
            else:
                replies.append(b"500 what\r\n")
        if commands_in_chunk > 1 and not self.owner.pipelining:
            self.owner.pipelined_unasked = True
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))


class ScriptedRelay:
    """An SMTP relay on a free port with its own event loop in a thread. An address whose
    local part is `<step>-<code>` (step: mail, rcpt, data, end) gets that reply at that
    step, e.g. `rcpt-451@example.org` is refused for now at RCPT TO."""

    def __init__(self, *, pipelining: bool, insist: bool = False) -> None:
        self.pipelining = pipelining
        self.insist = insist
        self.port = free_port()
        self.transactions: list[Transaction] = []
        self.connections = 0
        self.pipelined_unasked = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def reply(self, address: str, step: str, default: bytes) -> bytes:
        local = address.split("@", 1)[0]
        if local.startswith(f"{step}-"):
            code = local.split("-", 1)[1]
            return f"{code} scripted {step} reply\r\n".encode()
        return default + b"\r\n"

    def start(self) -> ScriptedRelay:
        self._thread.start()

        async def boot() -> asyncio.Server:
            return await self._loop.create_server(lambda: _Relay(self), "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def insisting_relay() -> Iterator[ScriptedRelay]:
    relay = ScriptedRelay(pipelining=True, insist=True).start()
    yield relay
    relay.stop()


@pytest.fixture
def plain_relay() -> Iterator[ScriptedRelay]:
    relay = ScriptedRelay(pipelining=False).start()
    yield relay
    relay.stop()


def send_mail(port: int, requests: list[EmailRequest], timeout: float = 3.0) -> list[SendResult]:
    sender = SmtpSender(SmtpSettings(host="127.0.0.1", port=port, timeout=timeout, connections=1))

    async def run() -> list[SendResult]:
        try:
            return await sender.send_all(requests)
        finally:
            await sender.close()

    results = asyncio.run(run())
    assert sorted(r.delivery_id for r in results) == sorted(r.delivery_id for r in requests)
    return sorted(results, key=lambda r: r.delivery_id)


def mail(delivery_id: int, recipient: str, *, sender: str = "alerts@rrmm.invalid") -> EmailRequest:
    message = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: Briefing {delivery_id}\r\n\r\nBody.\r\n"
    ).encode()
    return EmailRequest(delivery_id, sender, recipient, message)


# ---------------------------------------------------------------------------- SMTP tests


def test_envelope_and_data_are_pipelined_when_offered(insisting_relay: ScriptedRelay) -> None:
    # The relay answers nothing before it has RCPT TO and DATA: a client that waited for
    # the MAIL FROM reply would time out.
    results = send_mail(insisting_relay.port, [mail(1, "a@example.org"), mail(2, "b@example.org")])

    assert [r.ok for r in results] == [True, True], results
    assert [(t.sender, t.recipient) for t in insisting_relay.transactions] == [
        ("alerts@rrmm.invalid", "a@example.org"),
        ("alerts@rrmm.invalid", "b@example.org"),
    ]
    assert insisting_relay.connections == 1  # one connection, reused


def test_pipelined_replies_are_checked_per_command(insisting_relay: ScriptedRelay) -> None:
    requests = [
        mail(1, "rcpt-451@example.org"),  # recipient refused for now: retry this one
        mail(2, "rcpt-550@example.org"),  # recipient refused: final
        mail(3, "fine@example.org"),  # the same connection goes on
        mail(4, "fine2@example.org", sender="end-554@rrmm.invalid"),  # refused after the data
        mail(5, "fine3@example.org", sender="mail-451@rrmm.invalid"),  # sender refused for now
        mail(6, "fine4@example.org"),
    ]
    results = send_mail(insisting_relay.port, requests)

    by_id = {r.delivery_id: r for r in results}
    assert (by_id[1].ok, by_id[1].retryable, by_id[1].error) == (
        False,
        True,
        "SMTP 451: recipient refused",
    )
    assert (by_id[2].ok, by_id[2].retryable) == (False, False)
    assert "550" in str(by_id[2].error)
    assert by_id[3].ok
    assert (by_id[4].ok, by_id[4].retryable) == (False, False)
    assert "554" in str(by_id[4].error)
    assert (by_id[5].ok, by_id[5].retryable) == (False, True)
    assert "451" in str(by_id[5].error)
    assert by_id[6].ok
    delivered = [t.recipient for t in insisting_relay.transactions]
    # A refused recipient never gets the data; a 554 after the data was still transmitted.
    assert delivered == ["fine@example.org", "fine2@example.org", "fine4@example.org"]
    # The 4xx on MAIL FROM closed that session: the next message came on a new one.
    assert insisting_relay.connections == 2


def test_without_pipelining_one_command_at_a_time(plain_relay: ScriptedRelay) -> None:
    results = send_mail(
        plain_relay.port,
        [mail(1, "a@example.org"), mail(2, "rcpt-550@example.org"), mail(3, "b@example.org")],
    )

    assert [r.ok for r in results] == [True, False, True], results
    assert not plain_relay.pipelined_unasked
    assert [t.recipient for t in plain_relay.transactions] == ["a@example.org", "b@example.org"]


def test_a_dot_line_in_the_body_cannot_end_the_message_early(
    insisting_relay: ScriptedRelay,
) -> None:
    # A body that would smuggle a second transaction in if the dots were not doubled.
    body = b"Hello\r\n.\r\nMAIL FROM:<evil@example.org>\r\n.hidden line\r\n..two dots\r\n"
    message = b"From: alerts@rrmm.invalid\r\nSubject: x\r\n\r\n" + body
    results = send_mail(
        insisting_relay.port,
        [EmailRequest(1, "alerts@rrmm.invalid", "a@example.org", message)],
    )

    assert results[0].ok, results
    (transaction,) = insisting_relay.transactions
    assert transaction.data == message


def test_wire_message_leaves_crlf_messages_as_they_are_and_repairs_the_rest() -> None:
    ready = b"Subject: x\r\n\r\nline one\r\nline two\r\n"
    assert wire_message(ready) == ready + b".\r\n"
    assert wire_message(b"Subject: x\n\nbare\nlines") == b"Subject: x\r\n\r\nbare\r\nlines\r\n.\r\n"
    assert wire_message(b".first\r\nx\r\n.\r\n") == b"..first\r\nx\r\n..\r\n.\r\n"


@pytest.fixture
def pipelining_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def test_aiosmtpd_with_pipelining_gets_every_message_once(pipelining_sink: SmtpSink) -> None:
    pipelining_sink.rcpt_script["later@example.org"] = ["451 4.7.1 later"]
    requests = [mail(i, f"member{i}@example.org") for i in range(1, 21)]
    requests.append(mail(21, "later@example.org"))

    results = send_mail(pipelining_sink.port, requests)

    assert all(r.ok for r in results[:20]), results
    assert (results[20].ok, results[20].retryable) == (False, True)
    got = sorted(m.recipients[0] for m in pipelining_sink.received)
    assert got == sorted(f"member{i}@example.org" for i in range(1, 21))
    for caught in pipelining_sink.received:
        assert caught.message["Subject"].startswith("Briefing ")


# ---------------------------------------------------------------------------- webhooks


class CookieReceiver(ThreadedHttpServer):
    """Sets a cookie on `/set`; remembers the Cookie header of every request."""

    METHOD = "POST"

    def __init__(self) -> None:
        super().__init__()
        self.cookies: dict[str, str | None] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    def url(self, path: str) -> str:
        # A name, not an IP literal: aiohttp's default cookie jar ignores cookies of IP hosts.
        return f"http://localhost:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        with self.lock:
            self.cookies[request.path] = request.headers.get("Cookie")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            with self.lock:
                self.in_flight -= 1
        response = web.Response(status=200, text="ok")
        if request.path == "/set":
            response.set_cookie("receiver_session", "one-receivers-secret", path="/")
        return response


@pytest.fixture
def cookie_receiver() -> Iterator[CookieReceiver]:
    server = CookieReceiver().start()
    yield server
    server.stop()


def post_all(batches: list[list[WebhookRequest]], **options: Any) -> list[list[SendResult]]:
    """Several batches through one sender (one session, as a worker keeps it)."""

    async def run() -> list[list[SendResult]]:
        sender = WebhookSender(
            allow_private=True,
            connect_timeout=2,
            total_timeout=5,
            retry_after_cap=60,
            **{"concurrency": 4, **options},
        )
        try:
            return [await sender.send_all(batch) for batch in batches]
        finally:
            await sender.close()

    return asyncio.run(run())


def hook(delivery_id: int, url: str) -> WebhookRequest:
    return WebhookRequest(delivery_id, url, b"{}", {"content-type": "application/json"})


def test_one_receivers_cookie_never_reaches_another_member(
    cookie_receiver: CookieReceiver,
) -> None:
    first, second = post_all(
        [[hook(1, cookie_receiver.url("/set"))], [hook(2, cookie_receiver.url("/other"))]]
    )

    assert first[0].ok, first
    assert second[0].ok, second
    assert set(cookie_receiver.cookies) == {"/set", "/other"}
    assert cookie_receiver.cookies["/other"] is None


def test_a_fixed_pool_of_senders_bounds_what_is_in_flight(
    cookie_receiver: CookieReceiver,
) -> None:
    cookie_receiver.delay = 0.1
    wanted_not = {3, 7}
    seen: list[int] = []

    async def run() -> list[SendResult]:
        sender = WebhookSender(
            allow_private=True,
            connect_timeout=2,
            total_timeout=5,
            concurrency=3,
            retry_after_cap=60,
        )
        try:
            return await sender.send_all(
                [hook(i, cookie_receiver.url(f"/h{i}")) for i in range(12)],
                on_result=lambda result: seen.append(result.delivery_id),
                wanted=lambda delivery_id: delivery_id not in wanted_not,
            )
        finally:
            await sender.close()

    results = asyncio.run(run())

    assert sorted(seen) == list(range(12))
    assert [r.delivery_id for r in results] == seen  # reported as each finished
    by_id = {r.delivery_id: r for r in results}
    for delivery_id in wanted_not:
        assert not by_id[delivery_id].ok
        assert by_id[delivery_id].retryable
        assert f"/h{delivery_id}" not in cookie_receiver.cookies  # never sent
    assert all(by_id[i].ok for i in range(12) if i not in wanted_not)
    assert cookie_receiver.max_in_flight == 3
