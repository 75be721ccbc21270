"""Slow clients cannot take the API: a body is read (within its deadline) before the
request takes an admission slot, so connections that send their headers and then stall
hold no slot, and each of them gets a 408 problem once the deadline passes."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.models import Role
from app.serving import uvicorn_options
from tests.support.live_server import serve

READ_TIMEOUT = 4.0
STALLED = 40


@pytest.fixture
def slow_settings(settings: Settings) -> Settings:
    # The default admission limit (12 slots): 40 stalled clients are more than three times it.
    return settings.model_copy(update={"body_read_timeout_seconds": READ_TIMEOUT})


@pytest.fixture
def live_url(slow_settings: Settings, engine: Any) -> Iterator[str]:  # noqa: ARG001 (requested for its effect: a migrated database)
    with serve(lambda _: create_app(slow_settings), **uvicorn_options(slow_settings)) as url:
        yield url


def stalled_post(url: str, stack: ExitStack) -> socket.socket:
    """A connection that sends a POST's headers and one byte of its 100-byte body, then
    nothing more."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=30))
    sock.sendall(
        b"POST /v1/acks HTTP/1.1\r\nHost: rrmm\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def test_forty_stalled_bodies_do_not_take_the_api(
    live_url: str, auth: Callable[[Role], dict[str, str]]
) -> None:
    viewer = auth(Role.VIEWER)
    with ExitStack() as stack:
        stalled = [stalled_post(live_url, stack) for _ in range(STALLED)]
        started = time.monotonic()
        time.sleep(0.3)  # let the server read every one of them up to the stall
        with httpx.Client(base_url=live_url, timeout=10) as http:
            for _ in range(5):
                for method, path in (("GET", "/v1/incidents"), ("POST", "/v1/acks")):
                    if method == "GET":
                        response = http.get(path, headers=viewer)
                    else:
                        response = http.post(path, json={"token": "A" * 42, "response": "x"})
                    assert response.status_code in (200, 404), response.text
        # All of that was answered while every stalled body still held its connection,
        # unanswered: the stalled ones took no admission slot from the others (an order of
        # events, not a wall-clock bound, so a busy machine cannot fail it).
        for sock in stalled:
            timeout = sock.gettimeout()
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1, socket.MSG_PEEK)
            sock.settimeout(timeout)

        for sock in stalled:
            status, headers, body = read_response(sock)
            assert status == 408, body
            assert headers["content-type"] == "application/problem+json"
            assert headers["connection"] == "close"
            problem = json.loads(body)
            assert problem["status"] == 408
            assert f"{READ_TIMEOUT:g} s" in problem["detail"]
        # The deadline is the one configured: not earlier, and not much later.
        assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 5


def test_a_trickled_body_gets_no_more_time_than_a_stalled_one(live_url: str) -> None:
    """The deadline is for the whole body: a byte every 0.5 s does not keep it open."""
    with ExitStack() as stack:
        sock = stalled_post(live_url, stack)
        started = time.monotonic()
        sock.settimeout(0.5)
        answer = b""
        while not answer and time.monotonic() - started < READ_TIMEOUT + 5:
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                continue
        sock.settimeout(30)
        status, headers, _ = read_response(sock)
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 3
