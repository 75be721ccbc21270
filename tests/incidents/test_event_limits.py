"""Limits on the events stream, over real sockets: a revoked key's open stream ends within
15 s (the stream re-checks its key on its own timer), and one key holds at most
RRMM_EVENTS_MAX_STREAMS_PER_KEY streams per API process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import create_key, revoke_key
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.models import Role
from app.principal import Principal
from tests.incidents.test_status import Person, add_members, declare
from tests.support.factories import assert_problem
from tests.support.live_server import serve

PROMISE = 15.0  # seconds: the bound for a revoked key's stream


@dataclass
class Stream:
    """One open stream, read in a thread: when its first event came and when it ended."""

    response: httpx.Response
    first_event: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0

    def read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line.startswith("event:"):
                    self.first_event.set()
        except httpx.HTTPError:
            pass  # closed by the test
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()


@contextmanager
def open_stream(url: str, incident_id: str, key: str) -> Iterator[Stream]:
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(30)) as client,
        client.stream("GET", f"/v1/incidents/{incident_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        stream = Stream(response)
        thread = threading.Thread(target=stream.read, daemon=True)
        thread.start()
        assert stream.first_event.wait(30), "no status event"
        yield stream
    thread.join(30)


def new_key(
    session_factory: sessionmaker[Session], role: Role = Role.VIEWER
) -> tuple[uuid.UUID, str]:
    with session_scope(session_factory) as session:
        key, plaintext = create_key(
            session, name=f"dashboard-{uuid.uuid4().hex[:6]}", role=role, actor=Principal.cli()
        )
        return key.id, plaintext


@pytest.fixture
def incident_id(
    client: TestClient, operator: dict[str, str], session_factory: sessionmaker[Session]
) -> str:
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])])
    incident: dict[str, Any] = declare(client, operator, members)
    return str(incident["id"])


def live(settings: Settings, **update: Any) -> Any:
    tuned = settings.model_copy(
        update={"events_poll_seconds": 0.2, "events_ping_seconds": 1, **update}
    )
    return serve(lambda _: create_app(tuned))


def test_the_key_recheck_is_at_most_fifteen_seconds_by_default_and_by_rule() -> None:
    assert Settings.model_fields["events_key_recheck_seconds"].default <= PROMISE
    with pytest.raises(ValidationError):
        Settings(mode="embedded", events_key_recheck_seconds=PROMISE + 1)


def test_a_revoked_keys_stream_ends_within_fifteen_seconds(
    settings: Settings, incident_id: str, session_factory: sessionmaker[Session]
) -> None:
    key_id, plaintext = new_key(session_factory, Role.OPERATOR)
    _other_id, other = new_key(session_factory)
    with (
        live(settings, events_key_recheck_seconds=2) as url,
        open_stream(url, incident_id, plaintext) as revoked,
        open_stream(url, incident_id, other) as kept,
    ):
        time.sleep(2.5)  # at least one re-check passes while the key is still valid
        assert not revoked.ended.is_set()
        with session_scope(session_factory) as session:
            revoke_key(session, key_id=key_id, actor=Principal.cli())
        revoked_at = time.monotonic()
        assert revoked.ended.wait(PROMISE), "the revoked key's stream is still open"
        assert revoked.ended_at - revoked_at <= PROMISE
        assert not kept.ended.is_set()  # another key's stream goes on
        # And the key opens nothing any more.
        refused = httpx.get(
            f"{url}/v1/incidents/{incident_id}/events",
            headers={"Authorization": f"Bearer {plaintext}"},
        )
        assert_problem(refused, 401)


def test_the_eleventh_stream_of_a_key_gets_429(
    settings: Settings, incident_id: str, session_factory: sessionmaker[Session]
) -> None:
    assert Settings.model_fields["events_max_streams_per_key"].default == 10
    _key_id, plaintext = new_key(session_factory)
    _other_id, other = new_key(session_factory)
    events = f"/v1/incidents/{incident_id}/events"
    with live(settings) as url, ExitStack() as stack:
        streams = [stack.enter_context(open_stream(url, incident_id, plaintext)) for _ in range(10)]
        refused = httpx.get(f"{url}{events}", headers={"Authorization": f"Bearer {plaintext}"})
        body = assert_problem(refused, 429)
        assert "at most 10" in body["detail"]
        assert refused.headers["retry-after"]
        # The limit is per key: another dashboard's key still gets its stream.
        stack.enter_context(open_stream(url, incident_id, other))
        # A stream closed gives its place back (once the server sees the disconnect).
        streams[0].response.close()
        deadline = time.monotonic() + 10
        while True:
            with (
                httpx.Client(base_url=url, timeout=30) as client,
                client.stream(
                    "GET", events, headers={"Authorization": f"Bearer {plaintext}"}
                ) as again,
            ):
                if again.status_code == 200:
                    break
                assert again.status_code == 429
            assert time.monotonic() < deadline, "the closed stream's place was not given back"
            time.sleep(0.2)
