"""The events stream over real sockets: two API apps on one database stand for two API
processes; a client resumes on the other one with `Last-Event-ID` and misses nothing.

Answers are recorded through the acknowledgement service with real signed tokens; sends
are simulated by moving ledger rows (as in test_status).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.incidents.events import LISTENER_QUEUE, EventHub, StatusSnapshot
from app.incidents.schemas import AnswerStreamEvent, IncidentStatusView, TimelineStreamEvent
from app.main import create_app
from app.models import Role
from app.state import app_state
from app.vocabulary import DeliveryStatus
from tests.incidents.test_status import (
    SECRET_COMMENT,
    Person,
    add_members,
    answer,
    declare,
    move,
)
from tests.support.factories import assert_problem
from tests.support.live_server import serve

Headers = dict[str, str]
WAIT = 30.0


@dataclass
class Event:
    event: str
    id: int
    data: dict[str, Any]
    raw: str


@dataclass
class Listener:
    """Reads one stream in a thread; events arrive in `events` (a queue)."""

    response: httpx.Response
    events: queue.Queue[Event | BaseException] = field(default_factory=queue.Queue)
    raw: list[str] = field(default_factory=list)

    def read(self) -> None:
        fields: dict[str, str] = {}
        lines: list[str] = []
        try:
            for line in self.response.iter_lines():
                self.raw.append(line)
                if line == "":
                    if "data" in fields:
                        self.events.put(
                            Event(
                                fields.get("event", "message"),
                                int(fields["id"]),
                                json.loads(fields["data"]),
                                "\n".join(lines),
                            )
                        )
                    fields, lines = {}, []
                    continue
                lines.append(line)
                if line.startswith(":"):
                    continue  # a keep-alive comment
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        except BaseException as exc:  # the stream closed under us: tell the test
            self.events.put(exc)

    def next(self, kind: str | None = None) -> Event:
        """The next event (of `kind`, skipping others), or fail after WAIT seconds."""
        while True:
            item = self.events.get(timeout=WAIT)
            if isinstance(item, BaseException):
                raise AssertionError(f"the stream ended: {item!r}")
            if kind is None or item.event == kind:
                return item

    def until(self, check: Callable[[Event], bool]) -> Event:
        while True:
            event = self.next()
            if check(event):
                return event


@contextmanager
def listen(base_url: str, incident_id: str, headers: Headers) -> Iterator[Listener]:
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(WAIT)) as client,
        client.stream("GET", f"/v1/incidents/{incident_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        listener = Listener(response)
        thread = threading.Thread(target=listener.read, daemon=True)
        thread.start()
        yield listener
    thread.join(WAIT)


@dataclass
class Servers:
    urls: list[str]
    apps: list[FastAPI]


@pytest.fixture
def servers(settings: Settings, engine: Any) -> Iterator[Servers]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """Two API apps (two processes, as far as the stream can tell) on one database."""
    fast = settings.model_copy(update={"events_poll_seconds": 0.2, "events_ping_seconds": 1})
    apps: list[FastAPI] = []

    def make_app(_: str) -> FastAPI:
        apps.append(create_app(fast))
        return apps[-1]

    with ExitStack() as stack:
        urls = [stack.enter_context(serve(make_app)) for _ in range(2)]
        yield Servers(urls, apps)


@pytest.fixture
def viewer(auth: Callable[[Role], Headers]) -> Headers:
    return auth(Role.VIEWER)


@dataclass
class Scene:
    incident: dict[str, Any]
    members: list[dict[str, str]]


@pytest.fixture
def scene(client: TestClient, operator: Headers, session_factory: sessionmaker[Session]) -> Scene:
    members = add_members(
        session_factory,
        [
            Person("editors", "MA", ["fr"]),
            Person("editors", "FR", ["fr"]),
            Person("personalities", "EG", ["ar"]),
        ],
    )
    incident = declare(
        client,
        operator,
        members,
        followup={"quotas": [{"network": "editors", "responses": ["will_engage"], "min": 1}]},
    )
    for member in members:
        move(session_factory, incident, member, DeliveryStatus.SENT)
    return Scene(incident, members)


def test_operators_see_each_answer_then_the_new_aggregates(
    servers: Servers,
    scene: Scene,
    operator: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    with listen(servers.urls[0], scene.incident["id"], operator) as stream:
        first = stream.next()
        assert first.event == "status"
        assert first.data["targeted"] == 3
        assert first.data["answers"]["answered"] == 0
        answer(session_factory, settings, scene.incident, scene.members[0], "will_engage", 5)
        answered = stream.next("answer")
        assert answered.id > first.id
        assert answered.data["member_id"] == scene.members[0]["id"]
        assert answered.data["member_name"] == scene.members[0]["name"]
        assert answered.data["response"] == "will_engage"
        assert answered.data["comment"] == SECRET_COMMENT
        # The answer met the quota: the timeline says so, after the answer.
        met = stream.next("timeline")
        assert met.data["kind"] == "quota_met"
        assert met.id > answered.id
        status = stream.until(lambda e: e.event == "status" and e.data["answers"]["answered"] == 1)
        assert status.data["quotas"][0]["met"] is True


def test_viewers_get_aggregates_only(
    servers: Servers,
    scene: Scene,
    viewer: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    with listen(servers.urls[0], scene.incident["id"], viewer) as stream:
        assert stream.next().event == "status"
        answer(session_factory, settings, scene.incident, scene.members[0], "will_engage", 5)
        met = stream.next("timeline")
        assert met.data["kind"] == "quota_met"
        assert "actor" not in met.data
        status = stream.until(lambda e: e.event == "status" and e.data["answers"]["answered"] == 1)
        assert status.data["answers"]["by_response"] == {"will_engage": 1}
        seen = "\n".join(stream.raw)
    assert "event: answer" not in seen
    for secret in (SECRET_COMMENT, scene.members[0]["name"], scene.members[0]["email"]):
        assert secret not in seen


def test_a_client_resumes_on_another_process_and_misses_nothing(
    servers: Servers,
    scene: Scene,
    client: TestClient,
    operator: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    with listen(servers.urls[0], scene.incident["id"], operator) as stream:
        last_seen = stream.next("status").id
    # Meanwhile, disconnected: two answers and an update.
    answer(session_factory, settings, scene.incident, scene.members[0], "will_engage", 5)
    answer(session_factory, settings, scene.incident, scene.members[2], "acknowledged", 6)
    updated = client.post(
        f"/v1/incidents/{scene.incident['id']}/updates",
        json={"briefing": {"en": {"subject": "Update", "body": "Calm returns."}}},
        headers=operator,
    )
    assert updated.status_code == 202, updated.text
    resume = {**operator, "Last-Event-ID": str(last_seen)}
    with listen(servers.urls[1], scene.incident["id"], resume) as stream:
        missed = [stream.next() for _ in range(4)]
        current = stream.next()
    assert [(e.event, e.data.get("kind") or e.data.get("response")) for e in missed] == [
        ("answer", "will_engage"),
        ("timeline", "quota_met"),
        ("answer", "acknowledged"),
        ("timeline", "updated"),
    ]
    ids = [e.id for e in missed]
    assert ids == sorted(ids)
    assert ids[0] > last_seen
    assert current.event == "status"
    assert current.id == ids[-1]
    assert current.data["answers"]["answered"] == 2
    # Resuming from the last id replays nothing: the status comes first.
    again = {**operator, "Last-Event-ID": str(ids[-1])}
    with listen(servers.urls[0], scene.incident["id"], again) as stream:
        assert stream.next().event == "status"


def test_one_reader_per_incident_per_process(
    servers: Servers, scene: Scene, operator: Headers, viewer: Headers
) -> None:
    hub = app_state(servers.apps[0]).event_hub
    with (
        listen(servers.urls[0], scene.incident["id"], operator) as first,
        listen(servers.urls[0], scene.incident["id"], viewer) as second,
    ):
        first.next("status")
        second.next("status")
        assert list(hub.feeds) == [uuid.UUID(scene.incident["id"])]
        assert len(hub.feeds[uuid.UUID(scene.incident["id"])].listeners) == 2


def test_listeners_joining_a_watched_incident_cost_no_reads(
    servers: Servers, scene: Scene, operator: Headers, viewer: Headers
) -> None:
    """However many listen, the incident's events and status are read by the process' feed
    alone: ten more listeners (operators and viewers) add no read of the timeline."""
    app, url, incident_id = servers.apps[0], servers.urls[0], scene.incident["id"]
    timeline_reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM incident_events" in statement:
            timeline_reads.append(statement)

    with listen(url, incident_id, operator) as first:
        first.next("status")
        feed = app_state(app).event_hub.feeds[uuid.UUID(incident_id)]
        sqlalchemy.event.listen(app_state(app).engine, "before_cursor_execute", count)
        try:
            reads_before = feed.reads
            with ExitStack() as stack:
                more = [
                    stack.enter_context(listen(url, incident_id, viewer if i % 2 else operator))
                    for i in range(10)
                ]
                for listener in more:
                    assert listener.next("status").data["id"] == incident_id
                assert len(feed.listeners) == 11
                feed_reads = feed.reads - reads_before
                seen = len(timeline_reads)
        finally:
            sqlalchemy.event.remove(app_state(app).engine, "before_cursor_execute", count)
    # The feed's reads only (one may have started before its count was taken).
    assert seen <= feed_reads + 1, (seen, feed_reads)


def test_a_listener_that_cannot_keep_up_is_dropped_and_the_others_are_not(
    session_factory: sessionmaker[Session],
) -> None:
    """Its queue is bounded: once full, it is ended (the end mark is the last thing it
    reads; the client then resumes with Last-Event-ID) and leaves the feed; a listener
    that keeps up gets everything."""

    async def scenario() -> None:
        hub = EventHub(session_factory, interval=60)
        incident_id = uuid.uuid4()  # no such incident: the feed's own reads only log
        slow, quick = hub.subscribe(incident_id), hub.subscribe(incident_id)
        feed = hub.feeds[incident_id]
        got = []
        try:
            for n in range(LISTENER_QUEUE + 1):
                hub._offer_all(feed, StatusSnapshot(n, b"{}", f'"{n}"'))
                while not quick.inbox.empty():
                    got.append(quick.inbox.get_nowait())
            assert slow not in feed.listeners
            assert quick in feed.listeners
            assert len(got) == LISTENER_QUEUE + 1
            drained = []
            while not slow.inbox.empty():
                drained.append(slow.inbox.get_nowait())
            assert drained[-1] is None
            assert len(drained) <= LISTENER_QUEUE
        finally:
            hub.unsubscribe(slow)
            hub.unsubscribe(quick)
            await hub.close()
        assert hub.feeds == {}

    asyncio.run(scenario())


def test_the_stream_refuses_what_it_cannot_serve(
    client: TestClient, scene: Scene, operator: Headers
) -> None:
    unknown = client.get(f"/v1/incidents/{uuid.uuid4()}/events", headers=operator)
    assert_problem(unknown, 404)
    bad = client.get(
        f"/v1/incidents/{scene.incident['id']}/events",
        headers={**operator, "Last-Event-ID": "not-a-number"},
    )
    assert_problem(bad, 422, "header.Last-Event-ID")


def _documented_events(app: FastAPI) -> dict[str, dict[str, Any]]:
    """Each event name → the component its `data` is documented as."""
    document = app.openapi()
    responses = document["paths"]["/v1/incidents/{incident_id}/events"]["get"]["responses"]
    item = responses["200"]["content"]["text/event-stream"]["itemSchema"]
    components = document["components"]["schemas"]
    events = {}
    for option in item["oneOf"]:
        ref = option["properties"]["data"]["contentSchema"]["$ref"]
        events[option["properties"]["event"]["const"]] = components[ref.rsplit("/", 1)[-1]]
    return events


STREAM_MODELS: dict[str, type[BaseModel]] = {
    "IncidentStatusView": IncidentStatusView,
    "TimelineStreamEvent": TimelineStreamEvent,
    "AnswerStreamEvent": AnswerStreamEvent,
}


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_every_event_sent_is_its_documented_schema(
    servers: Servers,
    scene: Scene,
    auth: Callable[[Role], Headers],
    role: Role,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    documented = _documented_events(servers.apps[0])
    assert set(documented) == {"status", "timeline", "answer"}
    answer(session_factory, settings, scene.incident, scene.members[0], "will_engage", 5)
    # From the start: the whole timeline, the answer (for operators), then the status.
    replay = {**auth(role), "Last-Event-ID": "0"}
    with listen(servers.urls[0], scene.incident["id"], replay) as stream:
        events = [stream.next()]
        while events[-1].event != "status":
            events.append(stream.next())

    kinds = {e.event for e in events}
    assert kinds == (
        {"timeline", "answer", "status"} if role is Role.OPERATOR else {"timeline", "status"}
    )
    for event in events:
        schema = documented[event.event]
        sent = set(event.data)
        assert set(schema["required"]) <= sent <= set(schema["properties"]), (event.event, sent)
        STREAM_MODELS[schema["title"]].model_validate(event.data)
