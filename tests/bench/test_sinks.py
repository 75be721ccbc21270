"""The benchmark's sinks speak enough SMTP and HTTP/1.1 for the clients that send to them
(aiosmtplib, aiohttp, and the benchmark's own protocol floor) and count what they receive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from bench.clients import floor_emails, floor_webhooks, library_emails, library_webhooks
from bench.sinks import Counters, HttpSink, SmtpSink


async def _serve(
    factory: Callable[[Counters, float], asyncio.Protocol], counters: Counters, latency: float
) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: factory(counters, latency), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_smtp_sink_counts_library_pipelined_and_chunked_messages() -> None:
    async def scenario() -> tuple[Counters, list[bytes]]:
        counters = Counters()
        server, port = await _serve(SmtpSink, counters, 0.0)
        try:
            library = await library_emails(port, 4, 2)
            floor = await floor_emails(port, 4, 2)  # the same Message-IDs again
            assert (library.ok, floor.ok) == (4, 4)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b"Message-ID: <chunked@bench>\r\nSubject: x\r\n\r\n.line\r\n"
            writer.write(
                b"EHLO t\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
                + f"BDAT {len(body)} LAST\r\n".encode()
                + body
                + b"QUIT\r\n"
            )
            replies = [await reader.readline() for _ in range(11)]
            writer.close()
            return counters, replies
        finally:
            server.close()

    counters, replies = asyncio.run(scenario())
    assert replies[0].startswith(b"220 ")
    assert b"250-CHUNKING\r\n" in replies
    assert replies[-1].startswith(b"221 ")
    assert counters.count == 9
    assert counters.ids == {f"<rrmm.delivery.{i}@rrmm.invalid>".encode() for i in range(4)} | {
        b"<chunked@bench>"
    }
    stats = json.loads(counters.as_json())
    assert stats["duplicates"] == 4
    assert stats["errors"] == 0


def test_http_sink_keep_alive_pipelined_requests_answered_in_order_after_latency() -> None:
    async def scenario() -> tuple[Counters, bytes, float, dict[str, object]]:
        counters = Counters()
        server, port = await _serve(HttpSink, counters, 0.2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = (
                "POST /h/{n} HTTP/1.1\r\nHost: x\r\nwebhook-id: msg_{n}\r\n"
                "Content-Length: 2\r\n\r\n{{}}"
            )
            started = time.monotonic()
            writer.write((request.format(n=1) + request.format(n=2)).encode())
            answers = b""
            while answers.count(b"HTTP/1.1 200 OK") < 2:
                answers += await reader.read(4096)
            elapsed = time.monotonic() - started
            writer.write(b"GET /_stats HTTP/1.1\r\nHost: x\r\n\r\n")
            stats_answer = await reader.read(4096)
            stats = json.loads(stats_answer.split(b"\r\n\r\n", 1)[1])
            writer.write(b"POST /h/3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            refused = await reader.read(4096)
            writer.close()
            return counters, refused, elapsed, stats
        finally:
            server.close()

    counters, refused, elapsed, stats = asyncio.run(scenario())
    assert elapsed >= 0.19  # the sink's --latency: both answers waited for it
    assert stats["count"] == 2
    assert stats["distinct_ids"] == 2
    assert stats["bytes"] == 4
    assert refused.startswith(b"HTTP/1.1 411 ")
    assert counters.errors == 1


def test_http_sink_serves_aiohttp_and_the_raw_floor_client() -> None:
    async def scenario() -> tuple[int, int, Counters]:
        counters = Counters()
        server, port = await _serve(HttpSink, counters, 0.0)
        try:
            library = await library_webhooks(f"http://127.0.0.1:{port}", 6, 3)
            floor = await floor_webhooks(f"http://127.0.0.1:{port}", 6, 3)
            return library.ok, floor.ok, counters
        finally:
            server.close()

    library_ok, floor_ok, counters = asyncio.run(scenario())
    assert (library_ok, floor_ok) == (6, 6)
    assert counters.count == 12
    assert counters.ids == {f"bench_{i}".encode() for i in range(6)}
    assert counters.without_id == 0
