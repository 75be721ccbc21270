"""Additions to the webhook receiver of `sinks.py` for transport-fault tests: when each
request arrived, whether the sender hung up before taking the whole answer, and a trap
that records any request at all (to prove that a redirect was not followed)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from tests.support.sinks import ThreadedHttpServer, WebhookReceiver


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


class RequestTrap(ThreadedHttpServer):
    """An HTTP server on 127.0.0.1 that answers 200 to any method and path and records it:
    an internal service that a followed redirect would reach."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[TrappedRequest] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            self.requests.append(TrappedRequest(request.method, request.path))
        return web.Response(text="internal")
