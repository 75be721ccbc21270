"""The app served by a real uvicorn on 127.0.0.1, in a thread: for clients that need a real
socket (a browser, concurrent HTTP clients) rather than the in-process TestClient."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free 127.0.0.1 port (no race between choosing the port
    and binding it: uvicorn serves on this very socket)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(
    make_app: Callable[[str], FastAPI], *, timeout: float = 20, **options: Any
) -> Iterator[str]:
    """Serve `make_app(base_url)` until the block ends; yields the base URL.

    The app is built once the port is known, so its settings can point `public_url` at it.
    `options` override uvicorn's settings (e.g. `app.serving.uvicorn_options(settings)`,
    what `rrmm api` runs with).
    """
    sock = bound_socket()
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        settings: dict[str, Any] = {
            "lifespan": "on",
            "ws": "none",
            "log_config": None,  # leave the app's logging configuration alone
            "log_level": "warning",
            "access_log": False,
            "timeout_graceful_shutdown": 5,
            **options,
        }
        config = uvicorn.Config(make_app(base_url), **settings)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {base_url}")
            time.sleep(0.02)
        try:
            yield base_url
        finally:
            server.should_exit = True
            thread.join(timeout)
            assert not thread.is_alive(), "uvicorn did not stop"
    finally:
        sock.close()
