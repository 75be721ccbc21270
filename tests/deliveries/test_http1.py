"""The webhook client of our own (`app.deliveries.http1`) against real servers on 127.0.0.1
that the tests script byte by byte: keep-alive reuse and what ends it, a receiver closing
idle connections, chunked and close-delimited answers, answers too large, receivers too
slow, TLS with a CA made for the test, and the address guard."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.deliveries.http1 import (
    MAX_HEADER_BYTES,
    MAX_RESPONSE_BYTES,
    Http1Client,
    InvalidTarget,
    ResponseHeadersTooLarge,
    ServerDisconnected,
    Target,
    parse_target,
    request_bytes,
)
from app.deliveries.transport import SendResult, WebhookRequest, WebhookSender
from app.netguard import NonPublicAddress
from tests.support.smtp_tls import make_certificates


@dataclass
class Received:
    connection: int  # 0 for the server's first connection, 1 for the next…
    path: str
    head: bytes
    body: bytes


@dataclass
class Exchange:
    """What the server's handler sees of one request, and how it answers."""

    server: ScriptedServer
    request: Received
    sock: socket.socket
    index_on_connection: int


# Returns False to close the connection after it (without waiting for the client).
Handler = Callable[[Exchange], bool]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answer(raw: bytes) -> Handler:
    def handle(exchange: Exchange) -> bool:
        exchange.sock.sendall(raw)
        return True

    return handle


@dataclass
class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1, one thread per connection; every request (Content-Length
    bodies) goes to `handler`. Records connections, requests, and which connections the
    client closed."""

    handler: Handler
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    closed_by_client: set[int] = field(default_factory=set)
    sni: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        if self.tls is not None:
            self.tls.sni_callback = self._record_sni

    def _record_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> ScriptedServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
                self._open.append(sock)
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, raw: socket.socket, number: int) -> None:
        sock = raw
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(raw, server_side=True)
                with self._lock:
                    self._open.append(sock)
            buffer = b""
            index = 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        self.closed_by_client.add(number)
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        self.closed_by_client.add(number)
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                request = Received(number, head.split(b" ")[1].decode(), head, body)
                with self._lock:
                    self.received.append(request)
                if not self.handler(Exchange(self, request, sock, index)):
                    return
                index += 1
        except OSError:
            return
        finally:
            sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(handler, tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client(
    *,
    allow_private: bool = True,
    connect_timeout: float = 2,
    total_timeout: float = 5,
    ssl_context: ssl.SSLContext | None = None,
) -> Http1Client:
    return Http1Client(
        allow_private=allow_private,
        connect_timeout=connect_timeout,
        total_timeout=total_timeout,
        max_idle=8,
        ssl_context=ssl_context,
    )


def post_bytes(target: Target, body: bytes = b"{}") -> bytes:
    return request_bytes(target, {"content-type": "application/json"}, body)


# ---------------------------------------------------------------------------- requests


def test_a_target_is_parsed_once_into_the_request_line_and_host() -> None:
    target = parse_target("https://Example.org/hooks/a?b=1&c=%20#ignored")
    assert target.origin.scheme == "https"
    assert target.origin.host == "example.org"
    assert target.origin.port == 443
    assert target.head == b"POST /hooks/a?b=1&c=%20 HTTP/1.1\r\nHost: example.org\r\n"
    ipv6 = parse_target("http://[::1]:8080")
    assert (ipv6.origin.host, ipv6.origin.port) == ("::1", 8080)
    assert ipv6.head == b"POST / HTTP/1.1\r\nHost: [::1]:8080\r\n"
    assert parse_target("http://１２７.０.０.１:81/x").origin.host == "127.0.0.1"


@pytest.mark.parametrize(
    "url", ["http://2130706433/x", "http://127.1/x", "http://0177.0.0.1/", "ftp://example.org/"]
)
def test_urls_that_cannot_be_called_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(InvalidTarget):
        parse_target(url)


@pytest.mark.parametrize(
    "headers", [{"x-a": "1\r\nx-injected: 1"}, {"x-a\nb": "1"}, {"x-a": "nul\0"}]
)
def test_a_header_that_could_end_its_line_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        request_bytes(parse_target("http://127.0.0.1/"), headers, b"")


def test_one_connection_carries_many_requests_and_the_request_is_as_written(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(answer(OK))
    target = parse_target(server.url("/hooks/7?x=1"))

    async def go() -> list[int]:
        http = client()
        try:
            return [
                (await http.post(target, post_bytes(target, b'{"n":%d}' % i))).status
                for i in range(5)
            ]
        finally:
            await http.close()

    assert asyncio.run(go()) == [200] * 5
    assert server.connections == 1
    assert [r.body for r in server.received] == [b'{"n":%d}' % i for i in range(5)]
    first = server.received[0]
    assert first.path == "/hooks/7?x=1"
    lines = first.head.split(b"\r\n")
    assert lines[0] == b"POST /hooks/7?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"content-type: application/json" in lines
    assert not any(line.lower().startswith(b"cookie") for line in lines)


def test_origins_have_pools_of_their_own(serve: Callable[..., ScriptedServer]) -> None:
    one, two = serve(answer(OK)), serve(answer(OK))
    targets = [parse_target(one.url()), parse_target(two.url())] * 3

    async def go() -> None:
        http = client()
        try:
            for target in targets:
                assert (await http.post(target, post_bytes(target))).status == 200
        finally:
            await http.close()

    asyncio.run(go())
    assert (one.connections, two.connections) == (1, 1)
    assert (len(one.received), len(two.received)) == (3, 3)


def test_connection_close_is_honoured(serve: Callable[..., ScriptedServer]) -> None:
    # The server says close but leaves the socket open: the client must close it itself.
    server = serve(answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            for _ in range(2):
                assert (await http.post(target, post_bytes(target))).status == 200
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 2
    assert [r.connection for r in server.received] == [0, 1]
    assert 0 in server.closed_by_client


def test_an_http_1_0_answer_is_not_kept_alive(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            for _ in range(2):
                assert (await http.post(target, post_bytes(target))).status == 200
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 2


# ---------------------------------------------------------------------------- closed connections


def test_a_connection_the_receiver_closed_while_idle_is_not_reused(
    serve: Callable[..., ScriptedServer],
) -> None:
    # Keep-alive by the headers, but the server closes right after each answer.
    def answer_then_close(exchange: Exchange) -> bool:
        exchange.sock.sendall(OK)
        return False

    server = serve(answer_then_close)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            assert (await http.post(target, post_bytes(target))).status == 200
            (idle,) = http._idle[target.origin]
            while not idle.closed:  # the close reaches the client's loop
                await asyncio.sleep(0.01)
            assert (await http.post(target, post_bytes(target))).status == 200
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 2
    assert [r.connection for r in server.received] == [0, 1]  # nothing sent into the dead one


def test_a_request_on_a_connection_closed_before_any_answer_byte_goes_once_more(
    serve: Callable[..., ScriptedServer],
) -> None:
    # The race a pool cannot avoid: the receiver closes an idle connection just as the
    # next request is written. Here: the first connection reads its second request and
    # closes without a byte of answer.
    def second_request_dropped(exchange: Exchange) -> bool:
        if exchange.request.connection == 0 and exchange.index_on_connection == 1:
            return False
        exchange.sock.sendall(OK)
        return True

    server = serve(second_request_dropped)
    target = parse_target(server.url())

    async def go() -> list[int]:
        http = client()
        try:
            return [(await http.post(target, post_bytes(target))).status for _ in range(3)]
        finally:
            await http.close()

    assert asyncio.run(go()) == [200, 200, 200]
    assert server.connections == 2
    assert [r.connection for r in server.received] == [0, 0, 1, 1]


def test_a_new_connection_closed_before_any_answer_is_not_tried_again(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda _exchange: False)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            with pytest.raises(ServerDisconnected) as caught:
                await http.post(target, post_bytes(target))
            assert caught.value.before_response
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 1
    assert len(server.received) == 1


def test_a_pooled_connection_cut_mid_answer_is_not_tried_again(
    serve: Callable[..., ScriptedServer],
) -> None:
    # Once part of an answer came, the receiver may have acted on the request: retrying is
    # the ledger's decision, not the pool's.
    def cut_second(exchange: Exchange) -> bool:
        if exchange.index_on_connection == 1:
            exchange.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            return False
        exchange.sock.sendall(OK)
        return True

    server = serve(cut_second)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            assert (await http.post(target, post_bytes(target))).status == 200
            with pytest.raises(ServerDisconnected) as caught:
                await http.post(target, post_bytes(target))
            assert not caught.value.before_response
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 1
    assert len(server.received) == 2


# ---------------------------------------------------------------------------- answers


def test_chunked_and_interim_answers_are_read_and_the_connection_kept(
    serve: Callable[..., ScriptedServer],
) -> None:
    def chunked(exchange: Exchange) -> bool:
        exchange.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        exchange.sock.sendall(
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        )
        for part in (b"he", b"llo", b" world"):
            exchange.sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        exchange.sock.sendall(b"0\r\n\r\n")
        return True

    server = serve(chunked)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            for _ in range(3):
                response = await http.post(target, post_bytes(target))
                assert response.status == 202
                assert response.headers["retry-after"] == "7"
                assert not response.truncated
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 1
    assert len(server.received) == 3


def test_an_answer_delimited_by_the_close_of_the_connection(
    serve: Callable[..., ScriptedServer],
) -> None:
    def until_close(exchange: Exchange) -> bool:
        exchange.sock.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\n\r\nbusy for now")
        return False

    server = serve(until_close)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()
        try:
            response = await http.post(target, post_bytes(target))
            assert (response.status, response.headers["retry-after"]) == (503, "3")
            assert not http._idle.get(target.origin)
        finally:
            await http.close()

    asyncio.run(go())


def test_a_huge_body_is_cut_off_at_the_cap_and_its_connection_dropped(
    serve: Callable[..., ScriptedServer],
) -> None:
    # 50 MB announced, 1 MB written, then the server waits: the client must not wait for
    # the rest (it would run into the timeout), nor reuse the connection.
    def huge(exchange: Exchange) -> bool:
        exchange.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n")
        exchange.sock.sendall(b"x" * 1_048_576)
        exchange.server.release.wait(30)
        return False

    server = serve(huge)
    target = parse_target(server.url())

    async def go() -> None:
        http = client(total_timeout=30)
        try:
            async with asyncio.timeout(20) as bound:
                response = await http.post(target, post_bytes(target))
            assert not bound.expired()
            assert (response.status, response.truncated) == (200, True)
            assert not http._idle.get(target.origin)
        finally:
            await http.close()

    asyncio.run(go())
    assert MAX_RESPONSE_BYTES < 1_048_576


@pytest.mark.parametrize("endless", [False, True])
def test_headers_past_the_cap_fail_the_request(
    serve: Callable[..., ScriptedServer], endless: bool
) -> None:
    # Many complete header lines, or one header line that never ends.
    def big_headers(exchange: Exchange) -> bool:
        exchange.sock.sendall(b"HTTP/1.1 200 OK\r\n")
        if endless:
            exchange.sock.sendall(b"X-Endless: " + b"a" * (2 * MAX_HEADER_BYTES))
            exchange.server.release.wait(30)
        else:
            line = b"X-Filler: " + b"b" * 1000 + b"\r\n"
            exchange.sock.sendall(line * (MAX_HEADER_BYTES // len(line) + 1) + b"\r\n")
        return False

    server = serve(big_headers)
    target = parse_target(server.url())

    async def go() -> None:
        http = client(total_timeout=30)
        try:
            async with asyncio.timeout(20) as bound:
                with pytest.raises(ResponseHeadersTooLarge):
                    await http.post(target, post_bytes(target))
            assert not bound.expired()
        finally:
            await http.close()

    asyncio.run(go())


def test_headers_just_under_the_cap_are_read(serve: Callable[..., ScriptedServer]) -> None:
    line = b"X-Filler: " + b"b" * 1000 + b"\r\n"
    filler = line * (MAX_HEADER_BYTES // len(line) - 2)
    server = serve(answer(b"HTTP/1.1 204 No Content\r\n" + filler + b"\r\n"))
    target = parse_target(server.url())

    async def go() -> int:
        http = client()
        try:
            return (await http.post(target, post_bytes(target))).status
        finally:
            await http.close()

    assert asyncio.run(go()) == 204


def test_a_receiver_that_never_answers_runs_into_the_total_timeout(
    serve: Callable[..., ScriptedServer],
) -> None:
    def silent(exchange: Exchange) -> bool:
        exchange.server.release.wait(30)
        return False

    server = serve(silent)
    target = parse_target(server.url())

    async def go() -> None:
        http = client(total_timeout=0.5)
        try:
            async with asyncio.timeout(20) as bound:
                with pytest.raises(TimeoutError):
                    await http.post(target, post_bytes(target))
            assert not bound.expired()
        finally:
            await http.close()

    asyncio.run(go())
    assert len(server.received) == 1


def test_a_tls_handshake_that_never_comes_runs_into_the_connect_timeout() -> None:
    # A plain TCP listener that never speaks: the https handshake hangs.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        target = parse_target(f"https://127.0.0.1:{listener.getsockname()[1]}/hook")

        async def go() -> None:
            http = client(connect_timeout=0.5, total_timeout=3600)
            try:
                async with asyncio.timeout(20) as bound:
                    with pytest.raises(TimeoutError):
                        await http.post(target, post_bytes(target))
                assert not bound.expired()
            finally:
                await http.close()

        asyncio.run(go())
    finally:
        listener.close()


# ---------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    certificates = make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    return context, certificates.ca_file


def test_https_verifies_the_certificate_and_sends_the_host_name(
    serve: Callable[..., ScriptedServer], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, ca_file = tls_server_context
    server = serve(answer(OK), tls=server_context)
    by_name = parse_target(server.url(host="localhost"))
    by_address = parse_target(server.url())

    async def go() -> None:
        http = client(ssl_context=ssl.create_default_context(cafile=str(ca_file)))
        try:
            for target in (by_name, by_name, by_address):
                assert (await http.post(target, post_bytes(target))).status == 200
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 2  # one per origin, the second request reused the first
    assert server.sni == ["localhost", None]  # no SNI for an address (RFC 6066)


def test_https_refuses_a_certificate_it_cannot_verify(
    serve: Callable[..., ScriptedServer], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, _ = tls_server_context
    server = serve(answer(OK), tls=server_context)
    target = parse_target(server.url())

    async def go() -> None:
        http = client()  # the system's trust store: the test CA is not in it
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await http.post(target, post_bytes(target))
        finally:
            await http.close()

    asyncio.run(go())
    assert server.received == []


def test_https_refuses_a_certificate_for_another_host(
    serve: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path, host="127.0.0.2")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificates.cert_file, certificates.key_file)
    server = serve(answer(OK), tls=server_context)
    target = parse_target(server.url())  # 127.0.0.1: not in the certificate

    async def go() -> None:
        http = client(ssl_context=ssl.create_default_context(cafile=str(certificates.ca_file)))
        try:
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                await http.post(target, post_bytes(target))
        finally:
            await http.close()

    asyncio.run(go())
    assert server.received == []


# ---------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_non_public_addresses_are_refused_before_connecting(
    serve: Callable[..., ScriptedServer], host: str
) -> None:
    server = serve(answer(OK))
    target = parse_target(f"http://{host}:{server.port}/hook")

    async def go() -> None:
        http = client(allow_private=False)
        try:
            with pytest.raises(NonPublicAddress):
                await http.post(target, post_bytes(target))
        finally:
            await http.close()

    asyncio.run(go())
    assert server.connections == 0


# ---------------------------------------------------------------------------- the sender


def send(requests: list[WebhookRequest]) -> list[SendResult]:
    async def go() -> list[SendResult]:
        sender = WebhookSender(
            allow_private=True,
            connect_timeout=2,
            total_timeout=5,
            concurrency=2,
            retry_after_cap=60,
        )
        try:
            return await sender.send_all(requests)
        finally:
            await sender.close()

    return asyncio.run(go())


def test_the_sender_classifies_what_the_client_reports(
    serve: Callable[..., ScriptedServer],
) -> None:
    answers = {
        "/ok": OK,
        "/gone": b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n",
        "/busy": b"HTTP/1.1 429 Slow down\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
        "/moved": b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n",
        "/bad": b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n",
        "/garbage": b"SMTP/1.0 what\r\n\r\n",
    }

    def route(exchange: Exchange) -> bool:
        raw = answers[exchange.request.path]
        exchange.sock.sendall(raw)
        return exchange.request.path != "/garbage"

    server = serve(route)
    paths = [*answers, "/ok"]
    results = send([WebhookRequest(i, server.url(p), b"{}", {}) for i, p in enumerate(paths)])
    by_path = {paths[r.delivery_id]: r for r in results}

    assert by_path["/ok"].ok
    assert by_path["/gone"] == SendResult(
        1, ok=False, error="410 Gone: webhook disabled", disable_webhook=True
    )
    assert by_path["/busy"] == SendResult(
        2, ok=False, retryable=True, error="HTTP 429", retry_after=60
    )
    assert by_path["/moved"] == SendResult(3, ok=False, error="302: redirects are not followed")
    assert by_path["/bad"] == SendResult(4, ok=False, error="HTTP 400")
    garbage = by_path["/garbage"]
    assert (garbage.ok, garbage.retryable) == (False, True)
    assert garbage.error == "connection error: ClientResponseError"


def test_the_sender_refuses_injected_headers_without_sending(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(answer(OK))
    (result,) = send([WebhookRequest(1, server.url(), b"{}", {"x-a": "1\r\nx-b: 2"})])

    assert (result.ok, result.retryable) == (False, False)
    assert result.error is not None
    assert result.error.startswith("invalid webhook request")
    assert server.connections == 0


def test_the_sender_reports_timeouts_and_connection_errors_as_retryable(
    serve: Callable[..., ScriptedServer],
) -> None:
    def silent(exchange: Exchange) -> bool:
        exchange.server.release.wait(30)
        return False

    slow = serve(silent)
    closed = socket.create_server(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()

    async def go() -> list[SendResult]:
        sender = WebhookSender(
            allow_private=True,
            connect_timeout=2,
            total_timeout=0.5,
            concurrency=2,
            retry_after_cap=60,
        )
        try:
            return await sender.send_all(
                [
                    WebhookRequest(1, slow.url(), b"{}", {}),
                    WebhookRequest(2, f"http://127.0.0.1:{refused_port}/", b"{}", {}),
                ]
            )
        finally:
            await sender.close()

    by_id = {r.delivery_id: r for r in asyncio.run(go())}
    assert by_id[1] == SendResult(1, ok=False, retryable=True, error="timeout")
    assert by_id[2] == SendResult(
        2, ok=False, retryable=True, error="connection error: ClientConnectorError"
    )


def test_the_sender_names_an_unverified_certificate_and_a_cut_answer(
    serve: Callable[..., ScriptedServer], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, _ = tls_server_context
    untrusted = serve(answer(OK), tls=server_context)

    def cut(exchange: Exchange) -> bool:
        exchange.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    cutting = serve(cut)
    results = send(
        [WebhookRequest(1, untrusted.url(), b"{}", {}), WebhookRequest(2, cutting.url(), b"{}", {})]
    )

    by_id = {r.delivery_id: r for r in results}
    assert by_id[1] == SendResult(
        1, ok=False, retryable=True, error="connection error: ClientConnectorCertificateError"
    )
    assert by_id[2] == SendResult(
        2, ok=False, retryable=True, error="connection error: ClientPayloadError"
    )
    assert untrusted.received == []
