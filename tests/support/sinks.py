"""Real peers on 127.0.0.1 for delivery tests: an SMTP server and a webhook receiver, each
able to misbehave on demand. Nothing here is a mock: bytes cross real sockets."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Self

from aiohttp import web
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.netutil import free_port

# ---------------------------------------------------------------------------- SMTP


@dataclass
class CaughtMail:
    sender: str
    recipients: list[str]
    raw: bytes
    message: EmailMessage


class _MailHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self, _server: Any, session: Any, _envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # Offered like any production relay (aiosmtpd reads commands line by line, so
        # pipelined ones work): the delivery tests then run the sender's pipelined path.
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, _server: Any, _session: Any, envelope: Any, address: str, _options: Any
    ) -> str:
        script = self.sink.rcpt_script.get(address.lower())
        if script:
            answer = script.pop(0)
            if answer is not None:
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        content: bytes = envelope.content
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.sink.lock:
            self.sink.received.append(
                CaughtMail(envelope.mail_from, list(envelope.rcpt_tos), content, message)
            )
        return "250 Message accepted"


class SmtpSink:
    """aiosmtpd on a free port. `rcpt_script[address]` is a list of answers to give to the
    next RCPT TO for that address (None = accept), e.g. ["451 4.7.1 later", None]."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[CaughtMail] = []
        self.rcpt_script: dict[str, list[str | None]] = defaultdict(list)
        self.lock = threading.Lock()
        self.controller = Controller(
            _MailHandler(self), hostname="127.0.0.1", port=self.port, decode_data=False
        )

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[CaughtMail]:
        with self.lock:
            return [
                m for m in self.received if address.lower() in (r.lower() for r in m.recipients)
            ]


class HangingSmtpServer:
    """Accepts connections and never says a word (no greeting): a hung relay."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)

    def start(self) -> HangingSmtpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for connection in self._connections:
            connection.close()
        self._server.close()


# ---------------------------------------------------------------------------- webhooks


@dataclass
class Hit:
    path: str
    webhook_id: str
    verified: bool
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class Route:
    """What one path answers, request after request: a list of behaviours, the last one
    repeating. A behaviour is an HTTP status, or one of "drip", "huge", "redirect", or
    "hold" (answer 503 only once the receiver's `released` event is set)."""

    secret: str | None = None
    script: list[Any] = field(default_factory=lambda: [200])
    retry_after: str | None = None


class ThreadedHttpServer:
    """An aiohttp server on 127.0.0.1 with its own event loop in a thread; subclasses
    answer in `_handle`, for the `METHOD` on every path."""

    METHOD = "*"
    CLIENT_MAX_SIZE = 1024**2

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        app = web.Application(client_max_size=self.CLIENT_MAX_SIZE)
        app.router.add_route(self.METHOD, "/{tail:.*}", self._handle)

        async def boot() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class WebhookReceiver(ThreadedHttpServer):
    """An aiohttp server in a thread that verifies every request with `standardwebhooks`."""

    METHOD = "POST"
    CLIENT_MAX_SIZE = 10 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        # Seconds every answer waits (a receiver at real-world latency).
        self.delay = 0.0
        self.released = threading.Event()

    def route(self, path: str, **kwargs: Any) -> str:
        self.routes[path] = Route(**kwargs)
        return self.url(path)

    def set_secret(self, path: str, secret: str) -> None:
        self.routes.setdefault(path, Route()).secret = secret

    def hits_for(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        route = self.routes.get(request.path, Route())
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = False
        body = None
        if route.secret is not None:
            try:
                body = Webhook(route.secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        else:
            body = json.loads(raw)
        with self.lock:
            self.hits.append(
                Hit(request.path, headers.get("webhook-id", ""), verified, body, headers)
            )
            behaviour = route.script.pop(0) if len(route.script) > 1 else route.script[0]
        if self.delay:
            await asyncio.sleep(self.delay)
        if behaviour == "hold":
            while not self.released.is_set():
                await asyncio.sleep(0.05)
            return web.Response(status=503, text="held")
        if behaviour == "drip":
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            for _ in range(600):
                await response.write(b".")
                await asyncio.sleep(0.1)
            return response
        if behaviour == "huge":
            response = web.StreamResponse(status=200)
            response.content_length = 50 * 1024 * 1024
            await response.prepare(request)
            chunk = b"x" * (1024 * 1024)
            for _ in range(50):
                await response.write(chunk)
            return response
        if behaviour == "redirect":
            return web.Response(status=302, headers={"Location": "http://169.254.169.254/latest"})
        extra = {"Retry-After": route.retry_after} if route.retry_after else {}
        return web.Response(status=int(behaviour), text="ok", headers=extra)


def sinks() -> Iterator[tuple[SmtpSink, WebhookReceiver]]:
    smtp = SmtpSink().start()
    receiver = WebhookReceiver().start()
    try:
        yield smtp, receiver
    finally:
        receiver.stop()
        smtp.stop()
