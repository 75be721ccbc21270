"""Additions to the webhook receiver of `sinks.py` for transport-fault tests: when each
request arrived, whether the sender hung up before taking the whole answer, and a trap
that records any request at all (to prove that a redirect was not followed)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from aiohttp import web

from tests.support.sinks import WebhookReceiver, free_port


@dataclass(frozen=True)
class Arrival:
    path: str
    webhook_id: str
    at: float  # time.monotonic() in the test process


class TimedReceiver(WebhookReceiver):
    """A `WebhookReceiver` that also notes the arrival time of every request, sends a
    path's redirect to the address of `redirect_to[path]`, and remembers the paths whose
    answer the client abandoned mid-body (`cut_off`)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []
        self.redirect_to: dict[str, str] = {}
        self.cut_off: list[str] = []

    def start(self) -> TimedReceiver:
        super().start()
        return self

    def arrivals_for(self, path: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()  # the request is in: this is its arrival time
        with self.lock:
            self.arrivals.append(
                Arrival(request.path, request.headers.get("webhook-id", ""), time.monotonic())
            )
        try:
            response = await super()._handle(request)
        except ConnectionError:
            # Writing the answer failed: the client closed the connection before reading it.
            with self.lock:
                self.cut_off.append(request.path)
            raise
        target = self.redirect_to.get(request.path)
        if target is not None and 300 <= response.status < 400:
            response.headers["Location"] = target
        return response


@dataclass(frozen=True)
class TrappedRequest:
    method: str
    path: str


class RequestTrap:
    """An HTTP server on 127.0.0.1 that answers 200 to any method and path and records it:
    an internal service that a followed redirect would reach."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[TrappedRequest] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        with self.lock:
            self.requests.append(TrappedRequest(request.method, request.path))
        return web.Response(text="internal")

    def start(self) -> RequestTrap:
        self._thread.start()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)

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
