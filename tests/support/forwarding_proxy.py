"""A tiny real reverse proxy for the tests: listens on one loopback address, connects to the
upstream from that same address, and appends the peer's address to `X-Forwarded-For`, as
nginx's `proxy_add_x_forwarded_for` does. One request per connection (it asks the upstream
to close), which is all the tests need."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of test clients must not lose SYNs
    upstream: tuple[str, int]


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        request_line, *lines = head.split(b"\r\n")
        headers: list[tuple[bytes, bytes]] = []
        forwarded_for: list[bytes] = []
        length = 0
        for line in lines:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"x-forwarded-for":
                forwarded_for.append(value.strip())
            elif key != b"connection":
                headers.append((name, value.strip()))
            if key == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return
            body += chunk
        forwarded_for.append(self.client_address[0].encode())
        headers += [(b"X-Forwarded-For", b", ".join(forwarded_for)), (b"Connection", b"close")]
        out = b"\r\n".join([request_line, *(n + b": " + v for n, v in headers)])
        bind = (self.server.server_address[0], 0)
        with socket.create_connection(self.server.upstream, 10, source_address=bind) as up:
            up.sendall(out + b"\r\n\r\n" + body)
            while chunk := up.recv(65536):
                client.sendall(chunk)


@contextmanager
def forwarding_proxy(upstream_url: str, *, listen: str = "127.0.0.2") -> Iterator[str]:
    """Proxy `http://listen:<free port>` to `upstream_url`; yields the proxy's base URL."""
    host, port = upstream_url.removeprefix("http://").rsplit(":", 1)
    server = _Server((listen, 0), _Handler)
    server.upstream = (host, int(port))
    thread = threading.Thread(target=server.serve_forever, name="proxy", daemon=True)
    thread.start()
    try:
        yield f"http://{listen}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
