"""The listeners part of the status benchmark (`python -m bench.status --listeners 1000`).

N dashboards follow one incident's event stream on one API process, viewer and operator
keys mixed (ten streams per key, the default limit). Measured: the API's memory (PSS and
RSS of its process tree) before and after they connect, its CPU while nothing changes, and,
while briefing updates fan out (each changes the status many times), whether every listener
saw every status document the others saw, how long after the update's 202 each listener had
the first new status, and the spread between the first and the last listener to get each
status document. The listeners run in a thread of this process, on their own event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from sqlalchemy.orm import sessionmaker

from app.auth.service import create_key
from app.db import create_db_engine, create_session_factory, session_scope
from app.models import Role
from app.principal import Principal
from bench.fanout import BRIEFING, BenchError, Components, Service, log, rollup_kb

STREAMS_PER_KEY = 10  # RRMM_EVENTS_MAX_STREAMS_PER_KEY's default
CONNECT_BATCH = 100


@dataclass
class Seen:
    """What one listener received: (arrival time, digest of the status document)."""

    role: str
    statuses: list[tuple[float, str]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


async def _listen(
    session: aiohttp.ClientSession, path: str, key: str, seen: Seen, stop: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    try:
        async with session.get(path, headers=headers) as response:
            if response.status != 200:
                seen.error = f"HTTP {response.status}"
                seen.connected.set()
                return
            event, data = b"", b""
            async for line in response.content:
                line = line.rstrip(b"\r\n")
                if not line:
                    if event == b"status":
                        seen.statuses.append((time.monotonic(), _digest(data)))
                        seen.connected.set()
                    event, data = b"", b""
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                if stop.is_set():
                    return
            seen.error = "the stream ended"
    except (aiohttp.ClientError, TimeoutError) as exc:
        seen.error = type(exc).__name__
    finally:
        seen.connected.set()


class Crowd:
    """N listeners on their own event loop in a thread."""

    def __init__(self, base_url: str, path: str, keys: Sequence[tuple[str, str]], n: int):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base_url, self.path = base_url, path
        self.seen = [Seen(keys[(i // STREAMS_PER_KEY) % len(keys)][0]) for i in range(n)]
        self.keys = [keys[(i // STREAMS_PER_KEY) % len(keys)][1] for i in range(n)]
        self.session: aiohttp.ClientSession | None = None
        self.stop: asyncio.Event | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def _call(self, work: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def connect(self, timeout: float) -> float:
        """Open every stream, in batches; returns the seconds until all had a status."""

        def open_session() -> None:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self.session = aiohttp.ClientSession(
                self.base_url,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            )
            self.stop = asyncio.Event()

        self._call(open_session)
        started = time.monotonic()
        for first in range(0, len(self.seen), CONNECT_BATCH):
            batch = range(first, min(first + CONNECT_BATCH, len(self.seen)))

            def start(batch: range = batch) -> None:
                assert self.session is not None
                assert self.stop is not None
                for i in batch:
                    listen = _listen(self.session, self.path, self.keys[i], self.seen[i], self.stop)
                    self.tasks.append(self.loop.create_task(listen))

            self._call(start)
            for i in batch:
                if not self.seen[i].connected.wait(max(timeout - (time.monotonic() - started), 0)):
                    raise BenchError(f"listener {i} had no status within {timeout:g} s")
        errors = [s.error for s in self.seen if s.error]
        if errors:
            raise BenchError(f"{len(errors)} listeners failed to connect, e.g. {errors[0]}")
        return time.monotonic() - started

    def statuses(self) -> int:
        return sum(len(s.statuses) for s in self.seen)

    def close(self) -> None:
        async def shut() -> None:
            assert self.stop is not None
            self.stop.set()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.session is not None:
                await self.session.close()

        if self.session is not None:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def memory_kb(components: Components) -> dict[str, int]:
    from bench.fanout import process_tree

    pids = [pid for root in components.roots("api") for pid in process_tree(root)]
    return {
        "pss_kb": sum(rollup_kb(pid, "Pss") for pid in pids),
        "rss_kb": sum(rollup_kb(pid, "Rss") for pid in pids),
    }


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "max": round(ordered[-1], 3),
    }


def delivery_report(
    seen: Sequence[Sequence[tuple[float, str]]], changes: Sequence[float], since: float
) -> dict[str, Any]:
    """From what each listener received after `since` (arrival, digest) and the times the
    changes were made: whether all saw the same documents, the spread per document, and the
    delay from each change to each listener's first status after it."""
    after = [[(t, d) for t, d in statuses if t >= since] for statuses in seen]
    everyone: set[str] = set().union(*({d for _, d in mine} for mine in after)) if after else set()
    missed = sum(len(everyone - {d for _, d in mine}) for mine in after)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for mine in after:
        for t, d in mine:
            first[d] = min(first.get(d, t), t)
            last[d] = max(last.get(d, t), t)
    spreads = [last[d] - first[d] for d in first]
    delays = []
    for change in changes:
        for mine in after:
            arrived = [t for t, _ in mine if t >= change]
            if arrived:
                delays.append(min(arrived) - change)
    return {
        "status_documents": len(everyone),
        "missed": missed,
        "every_listener_saw_every_status": missed == 0 and bool(everyone),
        "spread_s": _quantiles(spreads),
        "change_to_listener_s": _quantiles(delays),
        "changes": len(changes),
    }


def make_keys(database_url: str, n: int) -> list[tuple[str, str]]:
    """(role, plaintext) keys for n listeners, viewer and operator alternating, created in
    one transaction through the service layer (the CLI costs a process each)."""
    engine = create_db_engine(database_url)
    factory: sessionmaker[Any] = create_session_factory(engine)
    keys = []
    try:
        with session_scope(factory) as session:
            for i in range((n + STREAMS_PER_KEY - 1) // STREAMS_PER_KEY):
                role = Role.VIEWER if i % 2 == 0 else Role.OPERATOR
                _, plaintext = create_key(
                    session, name=f"bench-listener-{i}", role=role, actor=Principal.cli()
                )
                keys.append((role.value, plaintext))
    finally:
        engine.dispose()
    return keys


def listeners_part(
    args: Any, service: Service, incident_id: str, quiet: Callable[[], bool]
) -> dict[str, Any]:
    """The listeners part; `quiet()` says whether the incident's fan-out is over."""
    n: int = args.listeners
    components = Components({"api": service.api_child.process.pid})
    keys = make_keys(service.backend.database_url, n)
    before = memory_kb(components)
    crowd = Crowd(service.base_url, f"/v1/incidents/{incident_id}/events", keys, n)
    try:
        log(f"connecting {n} listeners")
        connect_seconds = crowd.connect(timeout=max(60.0, n / 10))
        time.sleep(2)
        connected = memory_kb(components)
        log(f"idle for {args.listeners_idle_seconds:g} s")
        cpu0, at0, statuses0 = components.cpu()["api"], time.monotonic(), crowd.statuses()
        time.sleep(args.listeners_idle_seconds)
        idle_cpu = components.cpu()["api"] - cpu0
        idle_seconds = time.monotonic() - at0
        idle_statuses = crowd.statuses() - statuses0
        changes: list[float] = []
        since = time.monotonic()
        cpu1, statuses1 = components.cpu()["api"], crowd.statuses()
        for i in range(args.listeners_changes):
            log(f"briefing update {i + 1} of {args.listeners_changes}, its fan-out watched")
            posted = service.api.post(
                f"/v1/incidents/{incident_id}/updates", json={"briefing": BRIEFING}
            )
            if posted.status_code != 202:
                raise BenchError(f"update failed: {posted.status_code} {posted.text[:500]}")
            changes.append(time.monotonic())
            _settle(crowd, quiet, args.deadline)
        busy_cpu = components.cpu()["api"] - cpu1
        delivered = crowd.statuses() - statuses1
        peak = memory_kb(components)
        report = delivery_report([s.statuses for s in crowd.seen], changes, since)
    finally:
        crowd.close()
    added = connected["pss_kb"] - before["pss_kb"]
    return {
        "listeners": n,
        "keys": len(keys),
        "roles": {
            role: sum(1 for s in crowd.seen if s.role == role) for role in ("viewer", "operator")
        },
        "connect_seconds": round(connect_seconds, 2),
        "api_memory_kb": {"before": before, "connected": connected, "after_changes": peak},
        "added_pss_mb": round(added / 1024, 1),
        "added_pss_kb_per_listener": round(added / n, 1),
        "idle": {
            "seconds": round(idle_seconds, 2),
            "api_cpu_share_of_a_core": round(idle_cpu / idle_seconds, 4),
            "api_cpu_ms_per_listener_second": round(1000 * idle_cpu / idle_seconds / n, 4),
            "status_events": idle_statuses,
        },
        "changes": {
            **report,
            "status_events_delivered": delivered,
            "api_cpu_seconds": round(busy_cpu, 2),
            "api_cpu_ms_per_status_event": round(1000 * busy_cpu / delivered, 3)
            if delivered
            else None,
        },
    }


def _settle(crowd: Crowd, quiet: Callable[[], bool], deadline: float) -> None:
    """Until the fan-out is over and no listener got a status for 3 s."""
    last_count, last_change = crowd.statuses(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        count = crowd.statuses()
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 3 and quiet():
            return
    raise BenchError("the listeners' statuses did not settle before the deadline")


def fanout_over(api: httpx.Client, incident_id: str) -> Callable[[], bool]:
    """Whether no delivery of the incident is still open (pending, sending, retrying)."""

    def over() -> bool:
        response = api.get(f"/v1/incidents/{incident_id}/status")
        if response.status_code != 200:
            return False
        by_status = response.json()["deliveries"]["by_status"]
        return not any(by_status.get(s) for s in ("pending", "sending", "retrying"))

    return over
