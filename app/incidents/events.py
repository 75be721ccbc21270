"""The live events of an incident, for `GET /v1/incidents/{id}/events` (server-sent events).

The database is the source of truth, so any number of API processes can serve the stream
and a client can resume on any of them: every timeline event and every answer carries the
incident's sequence number (`incidents.event_seq`), which is the SSE `id`; a client that
reconnects with `Last-Event-ID: N` is first sent what it missed after N, from the database.

Each API process polls once per incident that has listeners (`IncidentFeed`), not once per
listener: 200 dashboards on one incident cost one status read per interval. Listeners that
cannot keep up are disconnected (their queue is bounded) and resume from the database.

What a listener gets depends on its role: operators get each answer (who, what, when);
viewers get the timeline without actors and only aggregates (the `status` event).

A stream outlives the request that authenticated it, so it re-checks its API key every
`RRMM_EVENTS_KEY_RECHECK_SECONDS` (at most 15) and ends once the key is revoked; each key
may hold at most `RRMM_EVENTS_MAX_STREAMS_PER_KEY` streams per API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.event import ServerSentEvent

from app.db import session_scope
from app.errors import AppError
from app.incidents.status import status_document
from app.models import Ack, ApiKey, Incident, IncidentEvent, Member

log = structlog.get_logger(__name__)
T = TypeVar("T")

# How many events one read returns; a client far behind is caught up in several reads.
READ_LIMIT = 500
# Messages queued for one listener before it is dropped (and resumes from the database).
LISTENER_QUEUE = 256
RETRY_MILLISECONDS = 2000


class TooManyStreams(AppError):
    status = 429
    title = "Too many requests"


class StreamLease:
    """One of a key's stream places in this process; given back once, however it ends."""

    def __init__(self, hub: EventHub, key_id: uuid.UUID) -> None:
        self.hub = hub
        self.key_id = key_id
        self._released = False

    def release(self) -> None:
        with self.hub.lock:
            if self._released:
                return
            self._released = True
            left = self.hub.streams_by_key.get(self.key_id, 1) - 1
            if left > 0:
                self.hub.streams_by_key[self.key_id] = left
            else:
                self.hub.streams_by_key.pop(self.key_id, None)


def key_is_active(session: Session, key_id: uuid.UUID) -> bool:
    """The key still exists and is not revoked (what `authenticate` requires of it)."""
    row = session.execute(select(ApiKey.revoked_at).where(ApiKey.id == key_id)).first()
    return row is not None and row[0] is None


@dataclass(frozen=True)
class StreamItem:
    """One timeline event or answer, in the two shapes the roles may see."""

    seq: int
    event: str  # "timeline" or "answer"
    for_operators: dict[str, Any]
    for_viewers: dict[str, Any] | None  # None: viewers do not get this item


@dataclass(frozen=True)
class StatusSnapshot:
    seq: int  # the incident's event number when the status was read
    payload: bytes
    etag: str


def _timeline_item(event: IncidentEvent) -> StreamItem:
    body = {
        "seq": event.seq,
        "kind": event.kind,
        "at": event.at.isoformat(),
        "briefing_version": event.briefing_version,
        "detail": event.detail,
    }
    return StreamItem(event.seq, "timeline", {**body, "actor": event.actor}, body)


def _answer_item(ack: Ack, name: str | None) -> StreamItem:
    assert ack.event_seq is not None
    return StreamItem(
        ack.event_seq,
        "answer",
        {
            "seq": ack.event_seq,
            "ack_id": ack.id,
            "member_id": str(ack.member_id) if ack.member_id else None,
            "member_name": name,
            "response": ack.response,
            "comment": ack.comment,
            "channel": ack.channel,
            "route": ack.route,
            "language": ack.language,
            "briefing_version": ack.briefing_version,
            "late": ack.late,
            "answered_at": ack.answered_at.isoformat(),
        },
        None,
    )


def read_after(session: Session, incident_id: uuid.UUID, after_seq: int) -> list[StreamItem]:
    """Timeline events and answers numbered after `after_seq`, in order, at most about
    `READ_LIMIT`; with no gap: if one kind was cut at the limit, the other is cut there too."""
    timeline = list(
        session.scalars(
            select(IncidentEvent)
            .where(IncidentEvent.incident_id == incident_id, IncidentEvent.seq > after_seq)
            .order_by(IncidentEvent.seq)
            .limit(READ_LIMIT)
        )
    )
    answers: list[tuple[Ack, str | None]] = [
        (row[0], row[1])
        for row in session.execute(
            select(Ack, Member.name)
            .outerjoin(Member, Member.id == Ack.member_id)
            .where(Ack.incident_id == incident_id, Ack.event_seq > after_seq)
            .order_by(Ack.event_seq)
            .limit(READ_LIMIT)
        )
    ]
    items = [_timeline_item(e) for e in timeline] + [_answer_item(a, n) for a, n in answers]
    items.sort(key=lambda item: item.seq)
    cut = min(
        (rows[-1] for rows in ([e.seq for e in timeline], [a.event_seq or 0 for a, _ in answers])
         if len(rows) == READ_LIMIT),
        default=None,
    )  # fmt: skip
    return [item for item in items if cut is None or item.seq <= cut]


def current_seq(session: Session, incident_id: uuid.UUID) -> int | None:
    """The incident's last event number; None if there is no such incident."""
    return session.scalar(select(Incident.event_seq).where(Incident.id == incident_id))


def read_status(session: Session, incident_id: uuid.UUID) -> StatusSnapshot:
    # The number first: the status read after it is at least as new, so a client that
    # resumes from this number misses nothing the status did not already show.
    seq = current_seq(session, incident_id) or 0
    payload, etag = status_document(session, incident_id)
    return StatusSnapshot(seq, payload, etag)


@dataclass
class IncidentFeed:
    """One poller per incident per process; listeners get what it reads."""

    incident_id: uuid.UUID
    listeners: set[asyncio.Queue[StreamItem | StatusSnapshot | None]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class EventHub:
    """The process' incident feeds, started with their first listener and stopped with
    their last."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        interval: float,
        *,
        max_streams_per_key: int = 10,
    ) -> None:
        self.session_factory = session_factory
        self.interval = interval
        self.feeds: dict[uuid.UUID, IncidentFeed] = {}
        self.max_streams_per_key = max_streams_per_key
        # Leases are taken in the (threadpool) endpoint and given back in the event loop.
        self.lock = threading.Lock()
        self.streams_by_key: dict[uuid.UUID, int] = {}

    def lease(self, key_id: uuid.UUID) -> StreamLease:
        """A stream place for `key_id`; 429 when the key already holds the maximum here."""
        with self.lock:
            held = self.streams_by_key.get(key_id, 0)
            if held >= self.max_streams_per_key:
                raise TooManyStreams(
                    f"this API key already has {held} open event streams on this server "
                    f"(at most {self.max_streams_per_key}); close one first",
                    headers={"Retry-After": "5"},
                )
            self.streams_by_key[key_id] = held + 1
        return StreamLease(self, key_id)

    async def in_thread(self, work: Callable[[Session], T]) -> T:
        """Run `work` with a session in a worker thread (the database driver blocks)."""

        def run() -> T:
            with session_scope(self.session_factory) as session:
                return work(session)

        return await anyio.to_thread.run_sync(run)

    def subscribe(
        self, incident_id: uuid.UUID
    ) -> asyncio.Queue[StreamItem | StatusSnapshot | None]:
        feed = self.feeds.get(incident_id)
        if feed is None:
            feed = self.feeds[incident_id] = IncidentFeed(incident_id)
        queue: asyncio.Queue[StreamItem | StatusSnapshot | None] = asyncio.Queue(LISTENER_QUEUE)
        feed.listeners.add(queue)
        if feed.task is None:
            feed.task = asyncio.create_task(self._poll(feed), name=f"feed-{incident_id}")
        return queue

    def unsubscribe(
        self, incident_id: uuid.UUID, queue: asyncio.Queue[StreamItem | StatusSnapshot | None]
    ) -> None:
        feed = self.feeds.get(incident_id)
        if feed is None:
            return
        feed.listeners.discard(queue)
        if not feed.listeners:
            del self.feeds[incident_id]
            if feed.task is not None:
                feed.task.cancel()

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            for queue in list(feed.listeners):
                self._offer(feed, queue, None)
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.task
        self.feeds.clear()

    def _offer(
        self,
        feed: IncidentFeed,
        queue: asyncio.Queue[StreamItem | StatusSnapshot | None],
        message: StreamItem | StatusSnapshot | None,
    ) -> None:
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            # Too slow: end its stream; the client reconnects with Last-Event-ID and
            # catches up from the database instead of from memory.
            feed.listeners.discard(queue)
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)

    async def _poll(self, feed: IncidentFeed) -> None:
        seq: int | None = None
        etag = None
        while feed.listeners:
            try:
                if seq is None:
                    seq = await self.in_thread(lambda s: current_seq(s, feed.incident_id)) or 0
                after = seq
                items = await self.in_thread(
                    partial(read_after, incident_id=feed.incident_id, after_seq=after)
                )
                for item in items:
                    for queue in list(feed.listeners):
                        self._offer(feed, queue, item)
                    seq = item.seq
                snapshot = await self.in_thread(lambda s: read_status(s, feed.incident_id))
                if snapshot.etag != etag:
                    etag = snapshot.etag
                    for queue in list(feed.listeners):
                        self._offer(feed, queue, snapshot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup: keep the listeners, try again
                log.warning("event_feed_read_failed", error=type(exc).__name__)
            await asyncio.sleep(self.interval)


def _sse(event: str, seq: int, data: dict[str, Any] | bytes) -> ServerSentEvent:
    text = data.decode() if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"))
    return ServerSentEvent(data=text, event=event, id=str(seq), retry=RETRY_MILLISECONDS)


async def stream(
    hub: EventHub,
    incident_id: uuid.UUID,
    *,
    operator: bool,
    last_event_id: int | None,
    key_id: uuid.UUID | None = None,
    recheck_seconds: float = 10.0,
    lease: StreamLease | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """One listener's events: what it missed since `last_event_id` (from the database), a
    `status` snapshot, then live items and status changes as the process' feed reads them.

    Without `Last-Event-ID` nothing is replayed: the snapshot says where things stand.
    With `key_id`, the key is looked up again every `recheck_seconds`, on the stream's own
    timer (not only when something happens), and the stream ends once it is revoked.
    """
    queue = hub.subscribe(incident_id)  # first, so nothing falls between replay and live
    getter: asyncio.Task[StreamItem | StatusSnapshot | None] | None = None
    loop = asyncio.get_running_loop()
    next_check = loop.time() + recheck_seconds
    try:
        seq = last_event_id
        if seq is None:
            seq = await hub.in_thread(lambda s: current_seq(s, incident_id)) or 0
        while True:  # replay, in pages
            page = partial(read_after, incident_id=incident_id, after_seq=seq)
            items = await hub.in_thread(page)
            for item in items:
                data = item.for_operators if operator else item.for_viewers
                if data is not None:
                    yield _sse(item.event, item.seq, data)
                seq = item.seq
            if not items:
                break
        snapshot = await hub.in_thread(lambda s: read_status(s, incident_id))
        sent = snapshot
        yield _sse("status", seq, snapshot.payload)
        while True:
            if key_id is not None and loop.time() >= next_check:
                if not await _key_still_active(hub, key_id):
                    return
                next_check = loop.time() + recheck_seconds
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            # One pending get across timeouts: cancelling a get could lose its message.
            done, _ = await asyncio.wait({getter}, timeout=max(next_check - loop.time(), 0))
            if getter not in done:
                continue
            message = getter.result()
            getter = None
            if message is None:
                return
            if isinstance(message, StatusSnapshot):
                # Not one read before ours (the numbers would go back for a moment).
                if message.etag != sent.etag and message.seq >= sent.seq:
                    sent = message
                    yield _sse("status", seq, message.payload)
                continue
            if message.seq <= seq:
                continue  # already sent by the replay
            seq = message.seq
            data = message.for_operators if operator else message.for_viewers
            if data is not None:
                yield _sse(message.event, message.seq, data)
    finally:
        if getter is not None:
            getter.cancel()
        hub.unsubscribe(incident_id, queue)
        if lease is not None:
            lease.release()


async def _key_still_active(hub: EventHub, key_id: uuid.UUID) -> bool:
    try:
        active = await hub.in_thread(partial(key_is_active, key_id=key_id))
    except Exception as exc:
        # Cannot tell: end the stream. The client reconnects (resuming with Last-Event-ID)
        # and is authenticated afresh, which is the check that could not be made here.
        log.warning("event_stream_key_check_failed", error=type(exc).__name__)
        return False
    if not active:
        log.info("event_stream_closed", reason="api key revoked")
    return active
