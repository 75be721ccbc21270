"""Verified API keys, remembered for a few seconds by each API process.

Dashboards poll every second or two, all day: reading the key's row on every poll costs a
database round trip and a worker thread per request, for an answer that almost never
changes. Each process remembers the principal of a key it verified for `ttl` seconds
(`RRMM_API_KEY_CACHE_SECONDS`), so a revocation takes effect on every process within `ttl`
seconds; unknown and revoked keys are never remembered (each costs a read, and a stranger
cannot fill the memory with made-up keys).
"""

from __future__ import annotations

import threading
import time

from app.principal import Principal


class KeyCache:
    """Principals by key hash, each until `ttl` seconds after it was read. `ttl` 0: off."""

    MAX_KEYS = 10_000  # the oldest entry goes first beyond that

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}
        # Sync dependencies look keys up from the threadpool, async ones from the loop.
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            with self._lock:
                self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_KEYS and key_hash not in self._entries:
                # Insertion order is expiry order (one ttl for all): the first is the oldest.
                del self._entries[next(iter(self._entries))]
            self._entries.pop(key_hash, None)
            self._entries[key_hash] = (time.monotonic() + self.ttl, principal)
