"""A clock a test moves by hand (app/clock.py): timer and cache logic without sleeping."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from app.clock import SYSTEM


class ManualClock:
    """Starts at the real time and moves only when `advance` is called."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or SYSTEM.now()
        self._monotonic = time.monotonic()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds
