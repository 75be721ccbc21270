"""The audit trail: every write is recorded with who, what, which object and which request."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import ApiKey, AuditEntry, Role
from app.pagination import encode_cursor
from tests.support.factories import PUBLIC_WEBHOOK, assert_problem, member_payload


def operator_key_id(db: Session) -> uuid.UUID:
    key_id = db.scalar(select(ApiKey.id).where(ApiKey.name == "test-operator"))
    assert key_id is not None
    return key_id


def audit_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(AuditEntry)) or 0


def entries(client: TestClient, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", params=params, headers=admin)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def write(client: TestClient, method: str, url: str, headers: dict[str, str], **kw: Any) -> Any:
    response = client.request(method, url, headers=headers, **kw)
    assert response.status_code in (200, 201, 204), response.text
    return response


def test_operator_writes_are_audited(client, operator, admin, db):
    key_id = str(operator_key_id(db))
    created = write(client, "POST", "/v1/members", operator, json=member_payload())
    member_id = created.json()["id"]
    updated = write(
        client, "PATCH", f"/v1/members/{member_id}", operator, json={"title": "Publisher"}
    )
    roster = write(client, "POST", "/v1/rosters", operator, json={"name": "Editors"})
    roster_id = roster.json()["id"]
    added = write(
        client,
        "POST",
        f"/v1/rosters/{roster_id}/members",
        operator,
        json={"member_ids": [member_id]},
    )
    deleted = write(client, "DELETE", f"/v1/members/{member_id}", operator)

    expected = [
        ("member.delete", "member", member_id, deleted),
        ("roster.members.add", "roster", roster_id, added),
        ("roster.create", "roster", roster_id, roster),
        ("member.update", "member", member_id, updated),
        ("member.create", "member", member_id, created),
    ]
    items = [e for e in entries(client, admin) if e["actor_key_id"] == key_id]
    assert [(e["action"], e["object_type"], e["object_id"]) for e in items] == [
        (action, object_type, object_id) for action, object_type, object_id, _ in expected
    ]
    for entry, (_action, _type, _id, response) in zip(items, expected, strict=True):
        request_id = response.headers["X-Request-ID"]
        assert request_id
        assert entry["request_id"] == request_id
        assert entry["actor"] == "test-operator"
    assert len({e["request_id"] for e in items}) == len(items)
    update = next(e for e in items if e["action"] == "member.update")
    assert update["details"] == {"fields": ["title"]}
    assert next(e for e in items if e["action"] == "roster.members.add")["details"] == {"count": 1}


def test_a_request_id_sent_by_the_client_is_kept(client, operator, admin):
    request_id = uuid.uuid4().hex

    response = client.post(
        "/v1/rosters", json={"name": "Editors"}, headers={**operator, "X-Request-ID": request_id}
    )

    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == request_id
    [entry] = entries(client, admin, action="roster.create")
    assert entry["request_id"] == request_id


def test_audit_is_newest_first_and_paginated(client, operator, admin):
    for i in range(5):
        write(client, "POST", "/v1/rosters", operator, json={"name": f"Roster {i}"})
    everything = entries(client, admin, limit=500)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)
    timestamps = [e["at"] for e in everything]
    assert timestamps == sorted(timestamps, reverse=True)
    # The fixtures' key creations come first, the rosters last.
    assert [e["action"] for e in everything[:5]] == ["roster.create"] * 5
    assert everything[-1]["action"] == "api_key.create"

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/audit", params=params, headers=admin)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(e["id"] for e in page["items"])
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
        assert pages < 20, "pagination does not end"

    assert seen == ids
    assert pages == (len(ids) + 1) // 2


def test_audit_filters(client, operator, admin):
    member = write(client, "POST", "/v1/members", operator, json=member_payload()).json()
    first = write(client, "POST", "/v1/rosters", operator, json={"name": "First"}).json()
    second = write(client, "POST", "/v1/rosters", operator, json={"name": "Second"}).json()
    write(client, "PATCH", f"/v1/rosters/{first['id']}", operator, json={"name": "Renamed"})

    by_action = entries(client, admin, action="roster.create")
    assert {e["object_id"] for e in by_action} == {first["id"], second["id"]}
    assert all(e["action"] == "roster.create" for e in by_action)

    by_type = entries(client, admin, object_type="member")
    assert [(e["action"], e["object_id"]) for e in by_type] == [("member.create", member["id"])]

    by_object = entries(client, admin, object_type="roster", object_id=first["id"])
    assert [e["action"] for e in by_object] == ["roster.update", "roster.create"]
    assert by_object[0]["details"] == {"fields": ["name"]}

    assert entries(client, admin, action="roster.delete") == []


def test_audit_refuses_a_bad_cursor(client, admin):
    assert_problem(client.get("/v1/audit", params={"cursor": "zzz"}, headers=admin), 422)
    # A well-formed cursor holding the wrong kind of key.
    response = client.get("/v1/audit", params={"cursor": encode_cursor("abc")}, headers=admin)
    assert_problem(response, 422, "query.cursor")


def test_a_failed_write_appends_nothing(client, operator, db):
    email = "taken@example.org"
    write(client, "POST", "/v1/members", operator, json=member_payload(email=email))
    write(client, "POST", "/v1/rosters", operator, json={"name": "Editors"})
    before = audit_count(db)

    duplicate = client.post("/v1/members", json=member_payload(email=email), headers=operator)
    assert_problem(duplicate, 409, "body.email")
    taken_name = client.post("/v1/rosters", json={"name": "Editors"}, headers=operator)
    assert_problem(taken_name, 409, "body.name")
    invalid = client.post("/v1/members", json=member_payload(country="ZZ"), headers=operator)
    assert_problem(invalid, 422, "body.country")

    assert audit_count(db) == before


def test_audit_never_holds_contact_details(client, operator, admin):
    email = "leila.private@example.org"
    new_email = "leila.new-address@example.org"
    new_webhook = PUBLIC_WEBHOOK + "/v2"
    created = write(
        client,
        "POST",
        "/v1/members",
        operator,
        json=member_payload(email=email, webhook_url=PUBLIC_WEBHOOK),
    ).json()
    secret = created["webhook_secret"]
    assert secret
    write(
        client,
        "PATCH",
        f"/v1/members/{created['id']}",
        operator,
        json={"email": new_email, "webhook_url": new_webhook},
    )
    rotated = write(client, "POST", f"/v1/members/{created['id']}/webhook-secret", operator)
    write(client, "DELETE", f"/v1/members/{created['id']}", operator)

    response = client.get("/v1/audit", params={"limit": 500}, headers=admin)

    assert response.status_code == 200, response.text
    text = response.text
    actions = [e["action"] for e in response.json()["items"] if e["object_type"] == "member"]
    assert actions == [
        "member.delete",
        "member.webhook_secret.rotate",
        "member.update",
        "member.create",
    ]
    for sensitive in (
        email,
        new_email,
        "example.org",
        PUBLIC_WEBHOOK,
        "93.184.215.14",
        secret,
        rotated.json()["webhook_secret"],
    ):
        assert sensitive not in text
    update = next(e for e in response.json()["items"] if e["action"] == "member.update")
    assert update["details"] == {"fields": ["email", "webhook_url"]}


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_audit_is_for_admins_only(client, auth, role):
    assert_problem(client.get("/v1/audit", headers=auth(role)), 403)


def test_audit_needs_a_key(client):
    assert_problem(client.get("/v1/audit"), 401)
