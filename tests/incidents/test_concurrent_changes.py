"""Two operators changing one incident at the same moment, through a real server (uvicorn on
a socket, one thread per request): the routes that read the incident, check its state and
then act run one after the other (SQLite: BEGIN IMMEDIATE; PostgreSQL: the incident row is
locked), so the second sees what the first did: a 409, never a 500 or a second stand-down."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app
from app.models import Briefing, Incident, Role
from tests.support.factories import briefing, declare_body, member_payload
from tests.support.live_server import serve

ROUNDS = 5
Call = tuple[str, dict[str, Any] | None]  # (path below /v1/incidents/{id}, JSON body)


@pytest.fixture
def base_url(settings: Settings, engine: Any) -> Iterator[str]:  # noqa: ARG001 (requested for its effect: a migrated database)
    with serve(lambda _url: create_app(settings)) as url:
        yield url


@pytest.fixture
def operator_client(
    base_url: str, auth: Callable[[Role], dict[str, str]]
) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=auth(Role.OPERATOR), timeout=60) as client:
        yield client


def declared(client: httpx.Client) -> str:
    member = member_payload(email=f"m.{uuid.uuid4().hex[:10]}@example.org")
    created = client.post("/v1/members", json=member)
    assert created.status_code == 201, created.text
    body = declare_body(audience={"member_ids": [created.json()["id"]]})
    response = client.post("/v1/incidents", json=body)
    assert response.status_code == 202, response.text
    incident_id: str = response.json()["id"]
    return incident_id


def at_once(
    base_url: str, headers: dict[str, str], incident_id: str, calls: list[Call]
) -> list[httpx.Response]:
    """Send `calls` together, each from its own thread and connection, released by one
    barrier; the responses in the order of `calls`."""
    barrier = threading.Barrier(len(calls))
    responses: list[httpx.Response | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def send(n: int, path: str, body: dict[str, Any] | None) -> None:
        try:
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                client.get("/healthz")  # connected before the barrier: only the call races
                barrier.wait(30)
                responses[n] = client.post(f"/v1/incidents/{incident_id}/{path}", json=body)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(n, path, body)) for n, (path, body) in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


def briefing_kinds(session_factory: sessionmaker[Session], incident_id: str) -> list[str]:
    with session_factory() as session:
        kinds = session.scalars(
            select(Briefing.kind)
            .where(Briefing.incident_id == uuid.UUID(incident_id))
            .order_by(Briefing.version)
        )
        return list(kinds)


def incident_status(session_factory: sessionmaker[Session], incident_id: str) -> str:
    with session_factory() as session:
        status = session.scalar(
            select(Incident.status).where(Incident.id == uuid.UUID(incident_id))
        )
        assert status is not None
        return status


def assert_conflict(response: httpx.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "the incident is" in response.json()["detail"]


@pytest.mark.parametrize(
    "calls",
    [
        [("cancel", None), ("cancel", None)],
        [("resolve", None), ("cancel", None)],
        [("cancel", None), ("cancel", None), ("resolve", None)],
    ],
    ids=["cancel+cancel", "resolve+cancel", "cancel+cancel+resolve"],
)
def test_only_one_of_simultaneous_endings_wins_the_others_get_409(
    base_url, operator_client, auth, session_factory, calls
):
    headers = auth(Role.OPERATOR)
    for _ in range(ROUNDS):
        incident_id = declared(operator_client)

        responses = at_once(base_url, headers, incident_id, calls)

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] + [409] * (len(calls) - 1), [r.text for r in responses]
        (winner,) = [n for n, r in enumerate(responses) if r.status_code == 202]
        for response in responses:
            if response.status_code == 409:
                assert_conflict(response)
        ending = {"cancel": "cancelled", "resolve": "resolved"}[calls[winner][0]]
        # One stand-down or cancellation notice, not one per request.
        assert briefing_kinds(session_factory, incident_id) == ["declared", ending]
        assert incident_status(session_factory, incident_id) == ending


def test_an_update_racing_a_cancellation_either_goes_first_or_gets_409(
    base_url, operator_client, auth, session_factory
):
    headers = auth(Role.OPERATOR)
    update = {"briefing": briefing(en="")}
    for _ in range(ROUNDS):
        incident_id = declared(operator_client)

        updated, cancelled = at_once(
            base_url, headers, incident_id, [("updates", update), ("cancel", None)]
        )

        assert cancelled.status_code == 202, cancelled.text
        kinds = briefing_kinds(session_factory, incident_id)
        if updated.status_code == 202:
            assert kinds == ["declared", "updated", "cancelled"]
        else:
            assert_conflict(updated)
            assert kinds == ["declared", "cancelled"]
        assert incident_status(session_factory, incident_id) == "cancelled"


def test_simultaneous_updates_all_succeed_with_distinct_versions(
    base_url, operator_client, auth, session_factory
):
    headers = auth(Role.OPERATOR)
    update = {"briefing": briefing(en="")}
    for _ in range(ROUNDS):
        incident_id = declared(operator_client)

        responses = at_once(base_url, headers, incident_id, [("updates", update)] * 3)

        assert [r.status_code for r in responses] == [202] * 3, [r.text for r in responses]
        assert briefing_kinds(session_factory, incident_id) == ["declared"] + ["updated"] * 3
        with session_factory() as session:
            versions = session.scalar(
                select(func.count(func.distinct(Briefing.version))).where(
                    Briefing.incident_id == uuid.UUID(incident_id)
                )
            )
        assert versions == 4
