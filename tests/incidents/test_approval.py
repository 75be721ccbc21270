"""The two-person rule: a severe actual declaration waits for a second principal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.incidents.service import expire_pending
from app.models import AuditEntry, OperatorNotice
from app.models.base import utcnow
from tests.incidents.test_preview import row_counts
from tests.support.factories import (
    TEST_SECRET_KEY,
    assert_problem,
    briefing,
    declare_body,
    make_client,
)

Headers = dict[str, str]


@pytest.fixture
def approval_client(settings: Settings, engine: Any) -> Iterator[TestClient]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """The API with the default two-person rule (severe and extreme, actual only)."""
    yield from make_client(
        settings.model_copy(
            update={
                "approval_severities": ["severe", "extreme"],
                "operator_emails": ["duty@rrmm.example"],
            }
        )
    )


def _member(client: TestClient, headers: Headers) -> None:
    from tests.incidents.test_incidents_api import new_member

    new_member(client, headers)


def _pending(client: TestClient, headers: Headers, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/incidents", json=declare_body(**overrides), headers=headers)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "pending_approval", body
    return body


def _kinds(client: TestClient, headers: Headers, incident_id: str) -> list[tuple[str, Any]]:
    page = client.get(f"/v1/incidents/{incident_id}/timeline", headers=headers).json()
    return [(e["kind"], e["actor"]) for e in page["items"]]


def _actions(db: Session, incident_id: str) -> list[str]:
    db.rollback()
    return list(
        db.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.object_id == incident_id)
            .order_by(AuditEntry.id)
        )
    )


def test_a_severe_declaration_sends_nothing_until_a_second_person_approves(
    approval_client, operator, admin, db
):
    client = approval_client
    _member(client, operator)
    before = row_counts(db)
    incident = _pending(client, operator)
    assert incident["approval_expires_at"] is not None
    counts = row_counts(db)
    for table in ("deliveries", "incident_targets", "incident_timers", "briefing_targeting"):
        assert counts[table] == before[table], table
    assert counts["operator_notices"] == before["operator_notices"] + 1
    notice = db.scalars(select(OperatorNotice)).one()
    assert notice.kind == "approval"
    assert notice.recipients == ["duty@rrmm.example"]
    assert incident["reference"] in notice.subject
    assert _kinds(client, operator, incident["id"]) == [("approval_requested", "test-operator")]
    status = client.get(f"/v1/incidents/{incident['id']}/status", headers=operator).json()
    assert status["status"] == "pending_approval"
    assert status["deliveries"]["by_status"] == {}

    own = client.post(f"/v1/incidents/{incident['id']}/approve", headers=operator)
    assert "second person" in assert_problem(own, 403)["detail"]
    assert row_counts(db)["deliveries"] == before["deliveries"]

    approved = client.post(f"/v1/incidents/{incident['id']}/approve", headers=admin)
    assert approved.status_code == 202, approved.text
    assert approved.json()["status"] == "mobilizing"
    assert approved.json()["targeted"] == 1
    assert row_counts(db)["deliveries"] == before["deliveries"] + 1
    kinds = _kinds(client, operator, incident["id"])
    assert kinds[:3] == [
        ("approval_requested", "test-operator"),
        ("approved", "test-admin"),
        ("declared", "test-admin"),
    ]
    assert _actions(db, incident["id"]) == ["incident.approval_requested", "incident.approve"]

    again = client.post(f"/v1/incidents/{incident['id']}/approve", headers=admin)
    assert "mobilizing" in assert_problem(again, 409)["detail"]


def test_a_rejected_declaration_is_never_sent(approval_client, operator, admin, db):
    client = approval_client
    _member(client, operator)
    incident = _pending(client, operator)
    url = f"/v1/incidents/{incident['id']}"
    before = row_counts(db)

    assert_problem(client.post(f"{url}/reject", json={}, headers=admin), 422, "body.reason")
    assert_problem(
        client.post(f"{url}/reject", json={"reason": ""}, headers=admin), 422, "body.reason"
    )
    assert_problem(client.get(f"{url}/cap", headers=operator), 409)
    update = client.post(f"{url}/updates", json={"briefing": briefing()}, headers=operator)
    assert_problem(update, 409)
    preview = client.post(f"{url}/updates/preview", json={"briefing": briefing()}, headers=operator)
    assert_problem(preview, 409)
    assert row_counts(db) == before

    rejected = client.post(f"{url}/reject", json={"reason": "Wrong country."}, headers=admin)
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert_problem(client.post(f"{url}/approve", headers=admin), 409)
    assert_problem(client.post(f"{url}/reject", json={"reason": "x"}, headers=admin), 409)
    assert_problem(client.get(f"{url}/cap", headers=operator), 409)
    counts = row_counts(db)
    assert counts["deliveries"] == before["deliveries"]
    assert counts["incident_targets"] == before["incident_targets"]
    timeline = client.get(f"{url}/timeline", headers=operator).json()["items"]
    assert timeline[-1]["kind"] == "rejected"
    assert timeline[-1]["actor"] == "test-admin"
    assert timeline[-1]["detail"] == {"reason": "Wrong country."}
    assert _actions(db, incident["id"])[-1] == "incident.reject"


def test_an_unapproved_declaration_expires(approval_client, operator, admin, db):
    client = approval_client
    _member(client, operator)
    incident = _pending(client, operator)
    db.rollback()
    assert expire_pending(db, utcnow()) == 0
    assert expire_pending(db, utcnow() + timedelta(minutes=61)) == 1
    db.commit()
    url = f"/v1/incidents/{incident['id']}"
    assert client.get(url, headers=operator).json()["status"] == "expired"
    assert "expired" in assert_problem(client.post(f"{url}/approve", headers=admin), 409)["detail"]
    assert _kinds(client, operator, incident["id"])[-1] == ("expired", None)
    assert _actions(db, incident["id"])[-1] == "incident.expire"


@pytest.mark.usefixtures("admin")
def test_cancel_never_waits_and_replays_return_the_pending_incident(approval_client, operator, db):
    client = approval_client
    _member(client, operator)
    body = declare_body()
    first = client.post("/v1/incidents", json=body, headers={**operator, "Idempotency-Key": "k"})
    assert first.status_code == 202, first.text
    replay = client.post("/v1/incidents", json=body, headers={**operator, "Idempotency-Key": "k"})
    assert replay.status_code == 200, replay.text
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["status"] == "pending_approval"

    cancelled = client.post(f"/v1/incidents/{first.json()['id']}/cancel", headers=operator)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert row_counts(db)["deliveries"] == 0


def test_what_needs_no_approval_goes_at_once(approval_client, operator):
    client = approval_client
    _member(client, operator)
    for overrides in ({"severity": "moderate"}, {"mode": "exercise"}):
        response = client.post("/v1/incidents", json=declare_body(**overrides), headers=operator)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "mobilizing"


def test_an_unknown_incident_cannot_be_approved(approval_client, admin):
    missing = approval_client.post(f"/v1/incidents/{uuid.uuid4()}/approve", headers=admin)
    assert_problem(missing, 404)


def test_the_approval_settings_parse():
    parsed = Settings(
        secret_key=TEST_SECRET_KEY, approval_severities="extreme, severe", approval_ttl_minutes=5
    )
    assert parsed.approval_severities == ["extreme", "severe"]
    with pytest.raises(ValueError, match="severities"):
        Settings(secret_key=TEST_SECRET_KEY, approval_severities="huge")
