"""Where the code reads the time: one small object, so a test can move time instead of
waiting for it.

Production code that decides *when* something is due (the follow-up timers, the status
cache) takes a `Clock` and defaults to `SYSTEM`; a test passes its own clock (see
tests/support/clock.py) and advances it. Timestamps written as facts (a row's
`created_at`, an answer's time) keep reading the real time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for expiry within one process)."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
