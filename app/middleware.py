"""ASGI middleware: admission control, body size and read-time limits, and an access log
that never prints query strings."""

from __future__ import annotations

import asyncio
import time

import structlog
from asgi_correlation_id import correlation_id
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PROBLEM_JSON, Problem
from app.metrics import METHODS, UNMATCHED

log = structlog.get_logger("rrmm.access")


class BodySizeLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length is honest, and
    bodies that take longer than `read_timeout` seconds to arrive with 408.

    The body is read (up to the limit) before the application runs, so an oversized body
    never reaches a handler and can never be half-processed. Imports get a larger limit.
    This sits outside the admission limit (`ConcurrencyLimit`): a client that sends its
    headers and then trickles (or stalls) its body holds no slot while it does, and the
    deadline is for the whole body, not between bytes, so trickling does not extend it.
    """

    IMPORT_PATHS = frozenset({"/v1/members/import"})

    def __init__(
        self, app: ASGIApp, *, default_limit: int, import_limit: int, read_timeout: float
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.import_limit = import_limit
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.import_limit if scope["path"] in self.IMPORT_PATHS else self.default_limit
        has_body = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _send_413(send, limit)
                    return
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body:
            # Neither a length nor chunks: HTTP/1.1 says there is no body (most GETs, every
            # poll), so there is nothing to read or time.
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away before sending its body
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await _send_413(send, limit)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _send_408(send, self.read_timeout)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ConcurrencyLimit:
    """At most `limit` requests inside the application at once; the others wait here, in
    the event loop, holding neither a thread nor a database connection.

    Why: a sync endpoint's request takes a database connection in one threadpool call (the
    API-key check) and needs another thread for the next step. With more requests in
    flight than connections, every thread can end up blocked waiting for a connection
    while the requests holding the connections wait for a thread: nothing moves until the
    pool's timeout (seen with 100 dashboards polling one process). Keeping the requests
    inside at or below the pool size makes that impossible.

    A slot is given back when the response starts: by then the request's session has been
    committed and closed (streams such as the events read with their own short sessions).
    A request that waits more than `timeout` seconds gets a 503 problem with Retry-After.
    `exempt` paths (liveness) never wait.
    """

    def __init__(self, app: ASGIApp, *, limit: int, timeout: float, exempt: frozenset[str]) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.exempt = exempt
        self._slots: asyncio.Semaphore | None = None  # made in the serving event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        slots = self._slots
        if slots.locked():
            try:
                # A timer, not wait_for: that costs a task per waiting request.
                async with asyncio.timeout(self.timeout):
                    await slots.acquire()
            except TimeoutError:
                await _send_503(send, self.timeout)
                return
        else:
            await slots.acquire()  # a free slot: taken at once
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()

        async def send_and_give_back(message: Message) -> None:
            if message["type"] == "http.response.start":
                give_back()
            await send(message)

        try:
            await self.app(scope, receive, send_and_give_back)
        finally:
            give_back()


async def _send_problem(
    send: Send, status: int, title: str, detail: str, header: tuple[bytes, bytes]
) -> None:
    """A problem+json answer sent from middleware, before the application runs."""
    body = Problem(title=title, status=status, detail=detail).model_dump_json(exclude_none=True)
    payload = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(payload)).encode()),
                header,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_503(send: Send, waited: float) -> None:
    detail = f"the API is at capacity (waited {waited:g} s for a slot); retry shortly"
    await _send_problem(send, 503, "Service unavailable", detail, (b"retry-after", b"1"))


async def _send_408(send: Send, waited: float) -> None:
    detail = f"the request body did not arrive within {waited:g} s"
    await _send_problem(send, 408, "Request timeout", detail, (b"connection", b"close"))


async def _send_413(send: Send, limit: int) -> None:
    detail = f"the request body is larger than {limit} bytes"
    await _send_problem(send, 413, "Payload too large", detail, (b"connection", b"close"))


class AccessLog:
    """Per request: one log line and one observation of the latency histogram, both by
    route template (neither the query string, which may hold an email, nor path
    parameters, which may hold a token)."""

    def __init__(self, app: ASGIApp, *, histogram: Histogram | None = None) -> None:
        self.app = app
        self.histogram = histogram
        # The histogram's child per (route, method, status): `labels()` validates and locks
        # on every call; the few combinations a service has are looked up once each.
        self._children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - started
            # The router stores the matched route in the scope: its template, not the path.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            if self.histogram is not None:
                method = scope["method"] if scope["method"] in METHODS else "OTHER"
                child = self._children.get((route, method, status))
                if child is None:
                    child = self.histogram.labels(route, method, str(status))
                    self._children[(route, method, status)] = child
                child.observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=route,
                status=status,
                ms=round(elapsed * 1000, 1),
                request_id=correlation_id.get(),
            )
