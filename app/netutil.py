"""Two small things every process harness needs (the CLI's `rrmm run` and demo, the
benchmarks, the tests): a free loopback port, and waiting for a condition with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


class NotReady(RuntimeError):
    """What was awaited did not happen within its time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], object], timeout: float, what: str, *, interval: float = 0.2
) -> None:
    """Poll `check` until it is truthy; `NotReady` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise NotReady(f"{what}: not within {timeout:.0f}s")
