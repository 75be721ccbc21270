"""The two-person rule end to end: a real worker sends nothing until a second key approves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.models import Delivery, Role
from tests.support.factories import declare_body, make_client, wait_final

pytestmark = pytest.mark.slow  # a real worker


@pytest.fixture
def approving_client(settings: Settings, engine: Any) -> Iterator[TestClient]:  # noqa: ARG001 (requested for its effect: a migrated database)
    yield from make_client(
        settings.model_copy(
            update={"webhook_allow_private": True, "approval_severities": ["severe", "extreme"]}
        )
    )


@pytest.mark.usefixtures("worker")
def test_a_severe_declaration_goes_out_once_a_second_key_approves(
    approving_client, auth, add_member, smtp, receiver, db
):
    members = [add_member(languages=["ar"]), add_member(languages=["fr"])]
    operator, admin = auth(Role.OPERATOR), auth(Role.ADMIN)
    response = approving_client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert response.status_code == 202, response.text
    incident = response.json()
    assert incident["status"] == "pending_approval"
    # A real rejected one beside it: never sent, whatever the worker and the sweeper do.
    other = approving_client.post("/v1/incidents", json=declare_body(), headers=operator).json()
    rejected = approving_client.post(
        f"/v1/incidents/{other['id']}/reject", json={"reason": "Duplicate."}, headers=admin
    )
    assert rejected.status_code == 200, rejected.text
    assert db.scalar(select(func.count()).select_from(Delivery)) == 0

    approved = approving_client.post(f"/v1/incidents/{incident['id']}/approve", headers=admin)
    assert approved.status_code == 202, approved.text
    state = wait_final(approving_client, auth(Role.VIEWER), incident["id"])
    assert state["deliveries"]["by_channel"] == {"email": {"sent": 2}, "webhook": {"sent": 2}}
    for member in members:
        assert len(smtp.to(member["email"])) == 1
        hits = receiver.hits_for(member["hook_path"])
        assert len(hits) == 1
        assert hits[0].verified
        assert hits[0].body is not None
        assert hits[0].body["data"]["incident"]["id"] == incident["id"]
    db.rollback()
    rows = db.execute(
        select(Delivery.incident_id, func.count()).group_by(Delivery.incident_id)
    ).all()
    assert [str(i) for i, _ in rows] == [incident["id"]]
