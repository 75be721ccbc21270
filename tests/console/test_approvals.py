"""The two-person rule in the console: a person sees what waits, with its briefing, and
approves or rejects it; the person who declared cannot approve; a viewer cannot decide."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.errors import Forbidden
from app.incidents import service as incidents
from app.models import Incident, IncidentEvent, Person, Role
from app.people import service as people
from app.principal import Principal
from tests.support.factories import briefing, declare_body, member_payload

SESSION_COOKIE = "__Host-rrmm_session"


@pytest.fixture
def approving(client_factory: Callable[..., TestClient]) -> TestClient:
    """The API with the two-person rule on for severe declarations."""
    return client_factory(approval_severities=["severe", "extreme"])


@pytest.fixture
def pending(approving: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    member = approving.post("/v1/members", json=member_payload(), headers=operator)
    assert member.status_code == 201, member.text
    body = declare_body(
        audience={"member_ids": [member.json()["id"]]}, briefing=briefing(en="", ar="")
    )
    declared = approving.post("/v1/incidents", json=body, headers=operator)
    assert declared.status_code == 202, declared.text
    assert declared.json()["status"] == "pending_approval"
    return dict(declared.json())


def open_session_for(
    session_factory: sessionmaker[Session], role: Role, email: str
) -> tuple[str, Person]:
    """An active person of this role, signed in: the session cookie's value."""
    with session_scope(session_factory) as session:
        link = people.create_person(
            session, email=email, name=email.split("@")[0], role=role, actor=Principal.cli()
        )
        person = session.get(Person, link.person.id)
        assert person is not None
        person.status = "active"
        policy = people.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=1))
        cookie, _ = people.open_session(session, person, policy=policy, address=None)
        session.flush()
        session.expunge(person)
    return cookie, person


@pytest.fixture
def amina(app: FastAPI, session_factory: sessionmaker[Session]) -> Iterator[Any]:
    """One client of the app (one lifespan), signed in as Amina, an operator."""
    cookie, person = open_session_for(session_factory, Role.OPERATOR, "amina@x.org")
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as browser:
        browser.cookies.set(SESSION_COOKIE, cookie)
        yield browser, person


def csrf_of(page: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token, page
    return token.group(1)


def status_of(session_factory: sessionmaker[Session], incident_id: str) -> Incident:
    with session_factory() as session:
        incident = session.get(Incident, uuid.UUID(incident_id))
        assert incident is not None
        session.expunge(incident)
        return incident


def test_a_second_person_approves_what_waits(
    amina: tuple[TestClient, Person],
    pending: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    console, person = amina
    page = console.get("/console/approvals")
    assert page.status_code == 200, page.text
    assert pending["reference"] in page.text
    assert "Subject in en" in page.text  # the briefing as written, in each language
    assert '<section class="briefing" lang="ar" dir="rtl">' in page.text
    assert f'action="/console/incidents/{pending["id"]}/approve"' in page.text

    approved = console.post(
        f"/console/incidents/{pending['id']}/approve", data={"csrf": csrf_of(page.text)}
    )
    assert approved.status_code == 303, approved.text
    assert approved.headers["location"] == "/console/approvals?done=approved"
    assert "the briefing is going out" in console.get(approved.headers["location"]).text
    incident = status_of(session_factory, pending["id"])
    assert incident.status == "mobilizing"
    assert incident.decided_by_person_id == person.id
    with session_factory() as session:
        actors = session.execute(
            select(IncidentEvent.kind, IncidentEvent.actor).where(
                IncidentEvent.incident_id == incident.id
            )
        ).all()
    assert ("approved", "amina@x.org") in [(k, a) for k, a in actors]


def test_a_rejection_needs_a_reason_next_to_its_field(
    amina: tuple[TestClient, Person],
    pending: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    console, _ = amina
    token = csrf_of(console.get("/console/approvals").text)
    url = f"/console/incidents/{pending['id']}/reject"
    blank = console.post(url, data={"csrf": token, "reason": "   "})
    assert blank.status_code == 422
    assert f'id="reason-error-{pending["id"]}"' in blank.text
    assert status_of(session_factory, pending["id"]).status == "pending_approval"

    rejected = console.post(url, data={"csrf": token, "reason": "Wrong country named."})
    assert rejected.status_code == 303
    incident = status_of(session_factory, pending["id"])
    assert (incident.status, incident.rejection_reason) == ("rejected", "Wrong country named.")
    again = console.post(
        f"/console/incidents/{pending['id']}/approve", data={"csrf": token}
    )  # decided already
    assert again.status_code == 409
    assert "no longer waits" in again.text


def test_the_declarer_cannot_approve_but_sees_it_waiting(
    amina: tuple[TestClient, Person],
    pending: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    console, person = amina
    with session_scope(session_factory) as session:
        row = session.get(Incident, uuid.UUID(pending["id"]))
        assert row is not None
        row.created_by_person_id = person.id  # as if Amina had declared it in the console
    page = console.get("/console/approvals")
    assert "a second person must approve it" in page.text
    assert f"/console/incidents/{pending['id']}/approve" not in page.text
    forced = console.post(
        f"/console/incidents/{pending['id']}/approve", data={"csrf": csrf_of(page.text)}
    )
    assert forced.status_code == 403
    assert "a second person must approve" in forced.text
    assert status_of(session_factory, pending["id"]).status == "pending_approval"


def test_the_service_compares_persons_and_refuses_the_unattributed(
    pending: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    someone = uuid.uuid4()
    with session_scope(session_factory) as session:
        row = session.get(Incident, uuid.UUID(pending["id"]))
        assert row is not None
        row.created_by_person_id = someone
    for actor in (
        Principal(key_id=None, name="same", role=Role.OPERATOR, person_id=someone),
        Principal(key_id=None, name="nobody", role=Role.ADMIN),  # the CLI: no one known
    ):
        with session_scope(session_factory) as session, pytest.raises(Forbidden):
            incidents.approve(
                session, uuid.UUID(pending["id"]), actor=actor, dispatch=print, chunk_members=10
            )


def test_a_viewer_decides_nothing_and_forms_need_their_token(
    amina: tuple[TestClient, Person],
    pending: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    console, _ = amina
    no_token = console.post(f"/console/incidents/{pending['id']}/approve", data={})
    assert no_token.status_code == 403
    unknown = console.post(
        "/console/incidents/not-an-id/approve", data={"csrf": csrf_of(console.get("/console").text)}
    )
    assert unknown.status_code == 404

    viewer_cookie, _ = open_session_for(session_factory, Role.VIEWER, "v@x.org")
    console.cookies.set(SESSION_COOKIE, viewer_cookie)  # the same browser, now a viewer's
    assert console.get("/console/approvals").status_code == 403
    token = csrf_of(console.get("/console").text)
    refused = console.post(f"/console/incidents/{pending['id']}/approve", data={"csrf": token})
    assert refused.status_code == 403
    assert 'href="/console/approvals"' not in console.get("/console").text
    assert status_of(session_factory, pending["id"]).status == "pending_approval"
