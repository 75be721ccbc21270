"""The live events of an incident, for `GET /v1/incidents/{id}/events` (server-sent events).

The database is the source of truth, so any number of API processes can serve the stream
and a client can resume on any of them: every timeline event and every answer carries the
incident's sequence number (`incidents.event_seq`), which is the SSE `id`; a client that
reconnects with `Last-Event-ID: N` is first sent what it missed after N, from the database.

Each API process polls once per incident that has listeners (`IncidentFeed`), not once per
listener: one read of the new events and the status per interval, whether one dashboard
listens or a thousand, and each message is encoded once per role, not once per listener.
A listener that joins a watched incident without `Last-Event-ID` starts from the feed's
position and last status: it costs no read at all. Listeners that cannot keep up are
disconnected (their queue is bounded) and resume from the database.

What a listener gets depends on its role: operators get each answer (who, what, when);
viewers get the timeline without actors and only aggregates (the `status` event).

A stream outlives the request that authenticated it, so the process re-checks the keys of
its open streams every `RRMM_EVENTS_KEY_RECHECK_SECONDS` (at most 15), in one query for all
of them, and ends the streams of a revoked key; each key may hold at most
`RRMM_EVENTS_MAX_STREAMS_PER_KEY` streams per API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
import orjson
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


def active_keys(session: Session, key_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Those of `key_ids` that still exist and are not revoked (what `authenticate`
    requires of a key), in one query per 500."""
    ids = list(key_ids)
    active: set[uuid.UUID] = set()
    for start in range(0, len(ids), 500):
        active.update(
            session.scalars(
                select(ApiKey.id).where(
                    ApiKey.id.in_(ids[start : start + 500]), ApiKey.revoked_at.is_(None)
                )
            )
        )
    return active


def frame(event: str, seq: int, data: bytes) -> bytes:
    """One server-sent event, encoded (`data` is JSON: one line)."""
    return ServerSentEvent(
        data=data.decode(), event=event, id=str(seq), retry=RETRY_MILLISECONDS
    ).encode()


@dataclass(frozen=True)
class StreamItem:
    """One timeline event or answer, in the two shapes the roles may see, encoded once."""

    seq: int
    event: str  # "timeline" or "answer"
    for_operators: bytes
    for_viewers: bytes | None  # None: viewers do not get this item

    @classmethod
    def of(
        cls, seq: int, event: str, operators: dict[str, Any], viewers: dict[str, Any] | None
    ) -> StreamItem:
        def encoded(data: dict[str, Any]) -> bytes:
            return frame(event, seq, orjson.dumps(data))

        return cls(seq, event, encoded(operators), None if viewers is None else encoded(viewers))

    def frame_for(self, operator: bool) -> bytes | None:
        return self.for_operators if operator else self.for_viewers


@dataclass(frozen=True)
class StatusSnapshot:
    seq: int  # the incident's event number when the status was read
    payload: bytes
    etag: str
    # Encoded per SSE id: the listeners of a feed are at the same id, so mostly one entry.
    _frames: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def frame(self, seq: int) -> bytes:
        encoded = self._frames.get(seq)
        if encoded is None:
            if len(self._frames) >= 16:
                self._frames.clear()
            encoded = self._frames[seq] = frame("status", seq, self.payload)
        return encoded


def _timeline_item(event: IncidentEvent) -> StreamItem:
    body = {
        "seq": event.seq,
        "kind": event.kind,
        "at": event.at.isoformat(),
        "briefing_version": event.briefing_version,
        "detail": event.detail,
    }
    return StreamItem.of(event.seq, "timeline", {**body, "actor": event.actor}, body)


def _answer_item(ack: Ack, name: str | None) -> StreamItem:
    assert ack.event_seq is not None
    return StreamItem.of(
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
        (
            rows[-1]
            for rows in ([e.seq for e in timeline], [a.event_seq or 0 for a, _ in answers])
            if len(rows) == READ_LIMIT
        ),
        default=None,
    )
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


def read_news(
    session: Session, incident_id: uuid.UUID, after_seq: int
) -> tuple[list[StreamItem], StatusSnapshot]:
    """A feed's read of one interval, in one session: the items after `after_seq`, then the
    status (read after them, so at least as new)."""
    return read_after(session, incident_id, after_seq), read_status(session, incident_id)


Inbox = asyncio.Queue[StreamItem | StatusSnapshot | None]


@dataclass(eq=False)
class Listener:
    """One open stream: its bounded queue, and the key it was opened with."""

    incident_id: uuid.UUID
    key_id: uuid.UUID | None
    inbox: Inbox = field(default_factory=lambda: asyncio.Queue(LISTENER_QUEUE))


@dataclass
class IncidentFeed:
    """One poller per incident per process; listeners get what it reads."""

    incident_id: uuid.UUID
    listeners: set[Listener] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    # Where the poller is: every item after `seq` will be offered to the listeners, and
    # `snapshot` is the last status it read (None until its first read).
    seq: int | None = None
    snapshot: StatusSnapshot | None = None
    reads: int = 0  # reads of the news made (started) so far


class EventHub:
    """The process' incident feeds, started with their first listener and stopped with
    their last, and the watch over the keys of the open streams."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        interval: float,
        *,
        max_streams_per_key: int = 10,
        key_recheck_seconds: float = 10.0,
    ) -> None:
        self.session_factory = session_factory
        self.interval = interval
        self.key_recheck_seconds = key_recheck_seconds
        self.feeds: dict[uuid.UUID, IncidentFeed] = {}
        self.max_streams_per_key = max_streams_per_key
        # Leases are taken in the (threadpool) endpoint and given back in the event loop.
        self.lock = threading.Lock()
        self.streams_by_key: dict[uuid.UUID, int] = {}
        self.listeners_by_key: dict[uuid.UUID, set[Listener]] = {}
        self._key_watch: asyncio.Task[None] | None = None

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

    def watched(self, incident_id: uuid.UUID) -> bool:
        """Whether this process already follows the incident (so it exists)."""
        return incident_id in self.feeds

    def subscribe(self, incident_id: uuid.UUID, key_id: uuid.UUID | None = None) -> Listener:
        feed = self.feeds.get(incident_id)
        if feed is None:
            feed = self.feeds[incident_id] = IncidentFeed(incident_id)
        listener = Listener(incident_id, key_id)
        feed.listeners.add(listener)
        if feed.task is None or feed.task.done():
            # done: its last listener was dropped (too slow) and its loop ended just now.
            feed.task = asyncio.create_task(self._poll(feed), name=f"feed-{incident_id}")
        if key_id is not None:
            self.listeners_by_key.setdefault(key_id, set()).add(listener)
            if self._key_watch is None:
                self._key_watch = asyncio.create_task(self._watch_keys(), name="stream-keys")
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        if listener.key_id is not None:
            mine = self.listeners_by_key.get(listener.key_id)
            if mine is not None:
                mine.discard(listener)
                if not mine:
                    del self.listeners_by_key[listener.key_id]
        feed = self.feeds.get(listener.incident_id)
        if feed is None:
            return
        feed.listeners.discard(listener)
        if not feed.listeners:
            del self.feeds[listener.incident_id]
            if feed.task is not None:
                feed.task.cancel()

    async def close(self) -> None:
        tasks = [feed.task for feed in self.feeds.values() if feed.task is not None]
        for feed in list(self.feeds.values()):
            for listener in list(feed.listeners):
                self._end(feed, listener)
        if self._key_watch is not None:
            tasks.append(self._key_watch)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.feeds.clear()
        self._key_watch = None

    def _end(self, feed: IncidentFeed | None, listener: Listener) -> None:
        """End a listener's stream: its queue gets the end mark, dropping what it holds if
        it is full (the client reconnects with Last-Event-ID and catches up from the
        database instead of from memory)."""
        if feed is not None:
            feed.listeners.discard(listener)
        with contextlib.suppress(asyncio.QueueEmpty):
            while listener.inbox.full():
                listener.inbox.get_nowait()
        listener.inbox.put_nowait(None)

    def _offer_all(self, feed: IncidentFeed, message: StreamItem | StatusSnapshot) -> None:
        for listener in list(feed.listeners):
            try:
                listener.inbox.put_nowait(message)
            except asyncio.QueueFull:
                self._end(feed, listener)  # too slow

    async def _poll(self, feed: IncidentFeed) -> None:
        while feed.listeners:
            try:
                if feed.seq is None:
                    feed.seq = await self.in_thread(lambda s: current_seq(s, feed.incident_id)) or 0
                read = partial(read_news, incident_id=feed.incident_id, after_seq=feed.seq)
                feed.reads += 1
                items, snapshot = await self.in_thread(read)
                for item in items:
                    self._offer_all(feed, item)
                    feed.seq = item.seq
                if feed.snapshot is None or snapshot.etag != feed.snapshot.etag:
                    feed.snapshot = snapshot
                    self._offer_all(feed, snapshot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup: keep the listeners, try again
                log.warning("event_feed_read_failed", error=type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def _watch_keys(self) -> None:
        """Every `key_recheck_seconds`, one query for the keys of all open streams; the
        streams of a key that is gone or revoked end (a reconnect is authenticated afresh,
        and refused)."""
        try:
            while self.listeners_by_key:
                await asyncio.sleep(self.key_recheck_seconds)
                keys = list(self.listeners_by_key)
                if not keys:
                    break
                try:
                    active = await self.in_thread(partial(active_keys, key_ids=keys))
                except Exception as exc:
                    # Cannot tell: end those streams. Their clients reconnect (resuming with
                    # Last-Event-ID) and are authenticated afresh: the check made anew.
                    log.warning("event_stream_key_check_failed", error=type(exc).__name__)
                    active = set()
                for key_id in keys:
                    if key_id in active:
                        continue
                    ended = self.listeners_by_key.pop(key_id, set())
                    if ended:
                        log.info(
                            "event_stream_closed", reason="api key revoked", streams=len(ended)
                        )
                    for listener in ended:
                        self._end(self.feeds.get(listener.incident_id), listener)
        finally:
            self._key_watch = None


async def stream(
    hub: EventHub,
    incident_id: uuid.UUID,
    *,
    operator: bool,
    last_event_id: int | None,
    key_id: uuid.UUID | None = None,
    lease: StreamLease | None = None,
) -> AsyncIterator[bytes]:
    """One listener's events: what it missed since `last_event_id` (from the database), a
    `status` snapshot, then live items and status changes as the process' feed reads them.

    Without `Last-Event-ID` nothing is replayed: the snapshot says where things stand.
    With `key_id`, the stream ends once the hub's key watch finds the key revoked.
    """
    listener = hub.subscribe(incident_id, key_id)  # first: nothing falls between replay and live
    feed = hub.feeds[incident_id]
    try:
        replay = True
        if last_event_id is not None:
            seq = last_event_id
        elif feed.seq is not None:
            # The feed offers every item after its position to our queue: nothing to read.
            seq, replay = feed.seq, False
        else:
            last: int | None = await hub.in_thread(lambda s: current_seq(s, incident_id))
            seq = last or 0
        while replay:  # in pages
            page = partial(read_after, incident_id=incident_id, after_seq=seq)
            items = await hub.in_thread(page)
            for item in items:
                data = item.frame_for(operator)
                if data is not None:
                    yield data
                seq = item.seq
            replay = bool(items)
        snapshot = feed.snapshot  # a later one than ours cannot have been offered yet
        if snapshot is None:
            snapshot = await hub.in_thread(lambda s: read_status(s, incident_id))
        sent = snapshot
        yield snapshot.frame(seq)
        while True:
            message = await listener.inbox.get()
            if message is None:
                return
            if isinstance(message, StatusSnapshot):
                # Not one read before ours (the numbers would go back for a moment).
                if message.etag != sent.etag and message.seq >= sent.seq:
                    sent = message
                    yield message.frame(seq)
                continue
            if message.seq <= seq:
                continue  # already sent by the replay
            seq = message.seq
            data = message.frame_for(operator)
            if data is not None:
                yield data
    finally:
        hub.unsubscribe(listener)
        if lease is not None:
            lease.release()
