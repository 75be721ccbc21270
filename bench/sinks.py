"""The benchmark's peers: an SMTP sink and an HTTP sink that speak just enough protocol to
accept what they are sent, count it and answer, at a few microseconds of CPU a message.

    python -m bench.sinks webhook --port P [--latency S]   # POST anything -> 200
    python -m bench.sinks smtp --port P --stats-port S [--latency S]

Why not aiosmtpd and aiohttp's server: they parse what they receive (aiosmtpd 0.9-1.5 ms of
CPU a message, more than the worker spends on a delivery; an aiohttp server 0.2-0.4 ms a
request), so on a 2-core machine the sinks would take the cores the service needs. These
parse no MIME and no JSON: a message is counted at its terminating dot (or its BDAT LAST
chunk), a request when its Content-Length body is in. Each also notes the Message-ID or
`webhook-id` it saw, from the raw header block, so a run can tell duplicates from misses.

`--latency S` answers the end of a message (SMTP) or each request (HTTP) S seconds after it
arrived, as a real receiver does; replies stay in order on a connection, and other
connections are not held up (the loop never sleeps).

Both run in a process of their own, so the orchestrator reads their CPU from /proc apart
from the service's. `GET /_stats` returns the counters as JSON (`count`, `bytes`,
`first_at`, `last_at`: time.monotonic(), one clock for every process of a Linux machine;
`last_at` is when the last answer was due), `POST /_reset` zeroes them. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

HOST = "127.0.0.1"
_MAX_LINE = 64 * 1024
_MAX_HEADERS = 64 * 1024


@dataclass
class Counters:
    """What a sink received. `ids` holds each Message-ID / webhook-id once."""

    count: int = 0
    size: int = 0  # bytes received (`bytes` in the JSON)
    first_at: float | None = None
    last_at: float | None = None
    ids: set[bytes] = field(default_factory=set)
    without_id: int = 0
    connections: int = 0
    errors: int = 0

    def hit(self, size: int, ident: bytes | None, answer_at: float) -> None:
        if self.first_at is None:
            self.first_at = answer_at
        self.last_at = answer_at
        self.count += 1
        self.size += size
        if ident is None:
            self.without_id += 1
        else:
            self.ids.add(ident)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def as_json(self) -> bytes:
        distinct = len(self.ids)
        return json.dumps(
            {
                "count": self.count,
                "bytes": self.size,
                "first_at": self.first_at,
                "last_at": self.last_at,
                "distinct_ids": distinct,
                # Messages seen again under an id already counted (a delivery sent twice).
                "duplicates": self.count - self.without_id - distinct,
                "without_id": self.without_id,
                "connections": self.connections,
                "errors": self.errors,
                "pid": os.getpid(),
            }
        ).encode()


def header_value(block: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, with its colon) in a raw header block,
    without parsing the rest: a lower-cased copy of a few hundred bytes and one find."""
    lowered = block.lower()
    at = lowered.find(b"\n" + name)
    if at < 0:
        if not lowered.startswith(name):
            return None
        at = -1
    start = at + 1 + len(name)
    end = block.find(b"\r\n", start)
    return block[start : end if end >= 0 else len(block)].strip()


class _Replies:
    """Answers in order on one connection, each written when it is due."""

    def __init__(self, transport: asyncio.Transport, latency: float) -> None:
        self.transport = transport
        self.latency = latency
        self.loop = asyncio.get_running_loop()
        self.pending: deque[tuple[float, bytes]] = deque()
        self.immediate: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.close_after = False

    def add(self, reply: bytes, delayed: bool) -> float:
        """Queue `reply`; returns when it is due (loop time)."""
        now = self.loop.time()
        if not delayed and not self.pending:
            self.immediate.append(reply)
            return now
        due = now + self.latency if delayed else now
        if self.pending and self.pending[-1][0] > due:
            due = self.pending[-1][0]  # never overtakes an earlier answer
        self.pending.append((due, reply))
        return due

    def flush(self) -> None:
        """Write what is due now in one write; schedule the rest."""
        out = self.immediate
        self.immediate = []
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))
        if self.pending:
            if self.timer is None:
                self.timer = self.loop.call_at(self.pending[0][0], self._on_timer)
        elif self.close_after:
            self.transport.close()

    def _on_timer(self) -> None:
        self.timer = None
        self.flush()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _due_monotonic(loop: asyncio.AbstractEventLoop, due: float) -> float:
    # Both loops' time() is time.monotonic(); convert anyway in case a loop's clock differs.
    return time.monotonic() + (due - loop.time())


# ----------------------------------------------------------------------------- SMTP


class SmtpSink(asyncio.Protocol):
    """EHLO/HELO, MAIL, RCPT, DATA (dot-terminated), BDAT, RSET, NOOP, QUIT; PIPELINING
    and CHUNKING advertised. Every command gets 250 (354 for DATA); no address is checked."""

    greeting = b"220 sink.bench.invalid ESMTP\r\n"
    ehlo = (
        b"250-sink.bench.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-CHUNKING\r\n250 SIZE 52428800\r\n"
    )

    def __init__(self, counters: Counters, latency: float) -> None:
        self.counters = counters
        self.latency = latency
        self.buffer = bytearray()
        self.mode = "command"  # or "data", "bdat"
        self.scanned = 0  # data mode: where to resume looking for the terminator
        self.bdat_left = 0
        self.bdat_last = False
        self.message = bytearray()
        self.chunking = False  # between a message's first BDAT and its LAST
        self.replies: _Replies | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.replies = _Replies(self.transport, self.latency)
        self.counters.connections += 1
        self.transport.write(self.greeting)

    def connection_lost(self, _exc: Exception | None) -> None:
        if self.replies is not None:
            self.replies.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.replies is not None
        self.buffer += data
        while self.buffer:
            if self.mode == "command":
                if not self._command():
                    break
            elif self.mode == "data":
                if not self._data():
                    break
            elif not self._bdat():
                break
        self.replies.flush()

    def _reply(self, reply: bytes, delayed: bool = False) -> float:
        assert self.replies is not None
        return self.replies.add(reply, delayed and self.latency > 0)

    def _command(self) -> bool:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_LINE:
                self.counters.errors += 1
                self.transport.close()
                self.buffer.clear()
            return False
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        verb = line[:4].upper()
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
            self._reply(b"250 OK\r\n")
        elif verb == b"EHLO":
            self._reply(self.ehlo)
        elif verb == b"DATA":
            self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            self.mode = "data"
            # The body starts at a line start: a leading CRLF makes the first line's
            # terminator findable as CRLF.CRLF like every other.
            self.message = bytearray(b"\r\n")
            self.scanned = 0
        elif verb == b"BDAT":
            parts = line.split()
            try:
                self.bdat_left = int(parts[1])
            except (IndexError, ValueError):
                self._reply(b"501 Syntax: BDAT size [LAST]\r\n")
                return True
            self.bdat_last = len(parts) > 2 and parts[2].upper() == b"LAST"
            if not self.chunking:  # the first chunk of a message
                self.message = bytearray()
                self.chunking = True
            self.mode = "bdat"
        elif verb == b"QUIT":
            self._reply(b"221 Bye\r\n")
            assert self.replies is not None
            self.replies.close_after = True
        else:
            self._reply(b"502 Command not implemented\r\n")
        return True

    def _data(self) -> bool:
        self.message += self.buffer
        self.buffer.clear()
        end = self.message.find(b"\r\n.\r\n", self.scanned)
        if end < 0:
            self.scanned = max(len(self.message) - 4, 0)
            return False
        rest = self.message[end + 5 :]
        self._received(bytes(self.message[2 : end + 2]))
        self.buffer[:0] = rest
        self.mode = "command"
        return True

    def _bdat(self) -> bool:
        take = min(self.bdat_left, len(self.buffer))
        self.message += self.buffer[:take]
        del self.buffer[:take]
        self.bdat_left -= take
        if self.bdat_left:
            return False
        if self.bdat_last:
            self._received(bytes(self.message))
        else:
            self._reply(b"250 chunk OK\r\n")
        self.mode = "command"
        return True

    def _received(self, message: bytes) -> None:
        headers_end = message.find(b"\r\n\r\n")
        block = message[: headers_end if 0 <= headers_end < _MAX_HEADERS else _MAX_HEADERS]
        due = self._reply(b"250 Message accepted\r\n", delayed=True)
        loop = asyncio.get_running_loop()
        self.counters.hit(
            len(message), header_value(block, b"message-id:"), _due_monotonic(loop, due)
        )
        self.message = bytearray()
        self.chunking = False


# ----------------------------------------------------------------------------- HTTP


class HttpSink(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: POST anything -> 200 (counted,
    with its `webhook-id`), `GET /_stats`, `POST /_reset`. No chunked bodies (411)."""

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, counters: Counters, latency: float) -> None:
        self.counters = counters
        self.latency = latency
        self.buffer = bytearray()
        self.replies: _Replies | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.replies = _Replies(self.transport, self.latency)
        self.counters.connections += 1

    def connection_lost(self, _exc: Exception | None) -> None:
        if self.replies is not None:
            self.replies.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.replies is not None
        self.buffer += data
        while self._request():
            pass
        self.replies.flush()

    def _request(self) -> bool:
        assert self.replies is not None
        if self.replies.close_after:
            self.buffer.clear()
            return False
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > _MAX_HEADERS:
                self._fail(b"431 Request Header Fields Too Large")
            return False
        head = bytes(self.buffer[: head_end + 2])
        line_end = head.find(b"\r\n")
        request_line = head[:line_end].split(b" ")
        if len(request_line) != 3:
            self._fail(b"400 Bad Request")
            return False
        method, target, version = request_line
        length_value = header_value(head, b"content-length:")
        if length_value is None:
            if header_value(head, b"transfer-encoding:") is not None:
                self._fail(b"411 Length Required")
                return False
            length = 0
        else:
            try:
                length = int(length_value)
            except ValueError:
                self._fail(b"400 Bad Request")
                return False
        total = head_end + 4 + length
        if len(self.buffer) < total:
            return False
        del self.buffer[:total]
        connection = header_value(head, b"connection:")
        closing = version == b"HTTP/1.0" or (
            connection is not None and connection.lower() == b"close"
        )
        if method == b"GET" and target == b"/_stats":
            body = self.counters.as_json()
            self.replies.add(_response(b"200 OK", body, b"application/json"), delayed=False)
        elif method == b"POST" and target == b"/_reset":
            self.counters.reset()
            self.replies.add(_response(b"200 OK", b'{"ok":true}', b"application/json"), False)
        elif method == b"POST":
            due = self.replies.add(self.ok, delayed=self.latency > 0)
            ident = header_value(head, b"webhook-id:")
            loop = asyncio.get_running_loop()
            self.counters.hit(length, ident, _due_monotonic(loop, due))
        else:
            self.replies.add(_response(b"405 Method Not Allowed", b""), delayed=False)
        if closing:
            self.replies.close_after = True
        return True

    def _fail(self, status: bytes) -> None:
        assert self.replies is not None
        self.counters.errors += 1
        self.replies.add(_response(status, b"", closing=True), delayed=False)
        self.replies.close_after = True
        self.buffer.clear()


def _response(
    status: bytes, body: bytes, content_type: bytes = b"text/plain", closing: bool = False
) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nConnection: close" if closing else b"",
            b"\r\n\r\n",
            body,
        ]
    )


# ----------------------------------------------------------------------------- serving


async def serve_webhooks(port: int, latency: float, ready: asyncio.Event | None = None) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpSink(counters, latency), HOST, port, backlog=4096)
    if ready is not None:
        ready.set()
    try:
        await _until_terminated()
    finally:
        server.close()


async def serve_smtp(
    port: int, stats_port: int, latency: float, ready: asyncio.Event | None = None
) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SmtpSink(counters, latency), HOST, port, backlog=4096)
    # The same counters, read over HTTP: the stats port counts nothing itself.
    stats = await loop.create_server(lambda: HttpSink(counters, 0.0), HOST, stats_port, backlog=128)
    if ready is not None:
        ready.set()
    try:
        await _until_terminated()
    finally:
        smtp.close()
        stats.close()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(RuntimeError, NotImplementedError):  # not the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sinks")
    parser.add_argument("kind", choices=("webhook", "smtp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-port", type=int, help="smtp only: port of /_stats")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()
    # The sinks should not be what limits the rate: the faster event loop if there is one.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.kind == "webhook":
        asyncio.run(serve_webhooks(args.port, args.latency))
    else:
        if args.stats_port is None:
            parser.error("smtp needs --stats-port")
        asyncio.run(serve_smtp(args.port, args.stats_port, args.latency))


if __name__ == "__main__":
    main()
