"""The rosters API: named groups of members, their pagination and their membership."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Member, Role, Roster, RosterMember
from tests.support.factories import assert_problem, member_payload


def create_roster(
    client: TestClient, headers: dict[str, str], name: str, **extra: Any
) -> dict[str, Any]:
    response = client.post("/v1/rosters", json={"name": name, **extra}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def create_member(client: TestClient, headers: dict[str, str], **overrides: Any) -> str:
    response = client.post("/v1/members", json=member_payload(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    member_id: str = response.json()["id"]
    return member_id


def add_members(
    client: TestClient, headers: dict[str, str], roster_id: str, member_ids: list[str]
) -> Any:
    return client.post(
        f"/v1/rosters/{roster_id}/members", json={"member_ids": member_ids}, headers=headers
    )


def roster_member_ids(db: Session, roster_id: str) -> set[uuid.UUID]:
    return set(
        db.scalars(
            select(RosterMember.member_id).where(RosterMember.roster_id == uuid.UUID(roster_id))
        )
    )


def test_create_roster(client, operator, db):
    response = client.post(
        "/v1/rosters",
        json={"name": "Editors — Maghreb", "description": "Print and radio editors"},
        headers=operator,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Editors — Maghreb"
    assert body["description"] == "Print and radio editors"
    assert body["member_count"] == 0
    stored = db.get(Roster, uuid.UUID(body["id"]))
    assert stored is not None
    assert stored.name == "Editors — Maghreb"


def test_create_roster_with_a_taken_name_is_a_conflict(client, operator, db):
    create_roster(client, operator, "Editors — Maghreb")

    response = client.post("/v1/rosters", json={"name": "Editors — Maghreb"}, headers=operator)

    assert_problem(response, 409, "body.name")
    assert db.scalar(select(func.count()).select_from(Roster)) == 1


def test_create_roster_refuses_unknown_fields(client, operator, db):
    response = client.post(
        "/v1/rosters", json={"name": "Editors", "owner": "someone"}, headers=operator
    )

    body = assert_problem(response, 422, "body.owner")
    assert any(e["reason"] == "unknown field" for e in body["errors"])
    assert db.scalar(select(func.count()).select_from(Roster)) == 0


def test_create_roster_refuses_a_blank_name(client, operator, db):
    response = client.post("/v1/rosters", json={"name": "   "}, headers=operator)

    assert_problem(response, 422, "body.name")
    assert db.scalar(select(func.count()).select_from(Roster)) == 0


def test_get_roster(client, operator):
    created = create_roster(client, operator, "Personalities — Balkans")

    response = client.get(f"/v1/rosters/{created['id']}", headers=operator)

    assert response.status_code == 200, response.text
    assert response.json() == created


def test_get_unknown_roster_is_404(client, operator):
    response = client.get(f"/v1/rosters/{uuid.uuid4()}", headers=operator)

    assert_problem(response, 404)


def test_list_rosters_pages_through_every_roster_once(client, operator):
    created = {create_roster(client, operator, f"Roster {i}")["id"] for i in range(5)}

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/rosters", params=params, headers=operator)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"

    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == created


def test_list_rosters_shows_member_counts(client, operator):
    roster = create_roster(client, operator, "Editors")
    empty = create_roster(client, operator, "Empty")
    members = [create_member(client, operator) for _ in range(2)]
    assert add_members(client, operator, roster["id"], members).status_code == 200

    response = client.get("/v1/rosters", headers=operator)

    assert response.status_code == 200, response.text
    counts = {item["id"]: item["member_count"] for item in response.json()["items"]}
    assert counts == {roster["id"]: 2, empty["id"]: 0}


def test_list_rosters_refuses_a_bad_cursor(client, operator):
    response = client.get("/v1/rosters", params={"cursor": "not-a-cursor!"}, headers=operator)

    assert_problem(response, 422, "query.cursor")


def test_list_roster_members_refuses_a_bad_cursor(client, operator):
    roster = create_roster(client, operator, "Editors")

    response = client.get(
        f"/v1/rosters/{roster['id']}/members", params={"cursor": "bm9wZQ"}, headers=operator
    )

    assert_problem(response, 422, "query.cursor")


def test_rename_roster(client, operator, db):
    roster = create_roster(client, operator, "Editors", description="kept")

    response = client.patch(
        f"/v1/rosters/{roster['id']}", json={"name": "Editors — Levant"}, headers=operator
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Editors — Levant"
    assert body["description"] == "kept"
    stored = db.get(Roster, uuid.UUID(roster["id"]))
    assert stored is not None
    assert stored.name == "Editors — Levant"


def test_patch_can_clear_the_description(client, operator):
    roster = create_roster(client, operator, "Editors", description="to clear")

    response = client.patch(
        f"/v1/rosters/{roster['id']}", json={"description": None}, headers=operator
    )

    assert response.status_code == 200, response.text
    assert response.json()["description"] is None
    assert response.json()["name"] == "Editors"


def test_rename_to_a_taken_name_is_a_conflict(client, operator, db):
    create_roster(client, operator, "Editors")
    other = create_roster(client, operator, "Personalities")

    response = client.patch(
        f"/v1/rosters/{other['id']}", json={"name": "Editors"}, headers=operator
    )

    assert_problem(response, 409, "body.name")
    stored = db.get(Roster, uuid.UUID(other["id"]))
    assert stored is not None
    assert stored.name == "Personalities"


def test_rename_to_its_own_name_is_allowed(client, operator):
    roster = create_roster(client, operator, "Editors")

    response = client.patch(
        f"/v1/rosters/{roster['id']}", json={"name": "Editors"}, headers=operator
    )

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Editors"


def test_patch_refuses_a_null_name(client, operator, db):
    roster = create_roster(client, operator, "Editors")

    response = client.patch(f"/v1/rosters/{roster['id']}", json={"name": None}, headers=operator)

    assert_problem(response, 422)
    stored = db.get(Roster, uuid.UUID(roster["id"]))
    assert stored is not None
    assert stored.name == "Editors"


def test_patch_unknown_roster_is_404(client, operator):
    response = client.patch(f"/v1/rosters/{uuid.uuid4()}", json={"name": "X"}, headers=operator)

    assert_problem(response, 404)


def test_delete_roster_keeps_its_members(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    members = [create_member(client, operator) for _ in range(2)]
    assert add_members(client, operator, roster["id"], members).status_code == 200

    response = client.delete(f"/v1/rosters/{roster['id']}", headers=operator)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(client.get(f"/v1/rosters/{roster['id']}", headers=operator), 404)
    assert db.scalar(select(func.count()).select_from(RosterMember)) == 0
    assert set(db.scalars(select(Member.id))) == {uuid.UUID(m) for m in members}
    for member_id in members:
        assert client.get(f"/v1/members/{member_id}", headers=operator).status_code == 200


def test_delete_unknown_roster_is_404(client, operator):
    assert_problem(client.delete(f"/v1/rosters/{uuid.uuid4()}", headers=operator), 404)


def test_add_members_counts_and_is_idempotent(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    first, second, third = (create_member(client, operator) for _ in range(3))

    response = add_members(client, operator, roster["id"], [first, second])
    assert response.status_code == 200, response.text
    assert response.json() == {"changed": 2, "member_count": 2}

    again = add_members(client, operator, roster["id"], [first, second, third, third])
    assert again.status_code == 200, again.text
    assert again.json() == {"changed": 1, "member_count": 3}

    repeat = add_members(client, operator, roster["id"], [first, second, third])
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == {"changed": 0, "member_count": 3}

    assert client.get(f"/v1/rosters/{roster['id']}", headers=operator).json()["member_count"] == 3
    assert roster_member_ids(db, roster["id"]) == {uuid.UUID(m) for m in (first, second, third)}


def test_add_members_with_an_unknown_id_adds_nothing(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    known = create_member(client, operator)
    unknown = str(uuid.uuid4())

    response = add_members(client, operator, roster["id"], [known, unknown])

    body = assert_problem(response, 422, "body.member_ids.1")
    assert [e["field"] for e in body["errors"]] == ["body.member_ids.1"]
    assert roster_member_ids(db, roster["id"]) == set()
    assert client.get(f"/v1/rosters/{roster['id']}", headers=operator).json()["member_count"] == 0


def test_add_members_refuses_an_empty_list(client, operator):
    roster = create_roster(client, operator, "Editors")

    assert_problem(add_members(client, operator, roster["id"], []), 422, "body.member_ids")


def test_add_members_to_an_unknown_roster_is_404(client, operator, db):
    member = create_member(client, operator)

    assert_problem(add_members(client, operator, str(uuid.uuid4()), [member]), 404)
    assert db.scalar(select(func.count()).select_from(RosterMember)) == 0


def test_list_roster_members(client, operator):
    roster = create_roster(client, operator, "Editors")
    members = [create_member(client, operator) for _ in range(3)]
    outsider = create_member(client, operator)
    assert add_members(client, operator, roster["id"], members).status_code == 200

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get(
            f"/v1/rosters/{roster['id']}/members", params=params, headers=operator
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert cursor is None
    assert sorted(seen) == sorted(members)
    assert outsider not in seen


def test_list_members_of_an_unknown_roster_is_404(client, operator):
    assert_problem(client.get(f"/v1/rosters/{uuid.uuid4()}/members", headers=operator), 404)


def test_remove_members(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    first, second, third = (create_member(client, operator) for _ in range(3))
    assert add_members(client, operator, roster["id"], [first, second, third]).status_code == 200

    response = client.post(
        f"/v1/rosters/{roster['id']}/members/remove",
        json={"member_ids": [first, second, str(uuid.uuid4())]},
        headers=operator,
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"changed": 2, "member_count": 1}
    assert roster_member_ids(db, roster["id"]) == {uuid.UUID(third)}
    # Removing from a roster does not delete the member.
    assert db.get(Member, uuid.UUID(first)) is not None


def test_remove_one_member(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    first, second = (create_member(client, operator) for _ in range(2))
    assert add_members(client, operator, roster["id"], [first, second]).status_code == 200

    response = client.delete(f"/v1/rosters/{roster['id']}/members/{first}", headers=operator)

    assert response.status_code == 204, response.text
    assert roster_member_ids(db, roster["id"]) == {uuid.UUID(second)}
    # A member not in the roster: a no-op, still 204.
    again = client.delete(f"/v1/rosters/{roster['id']}/members/{first}", headers=operator)
    assert again.status_code == 204, again.text
    assert roster_member_ids(db, roster["id"]) == {uuid.UUID(second)}


def test_remove_from_an_unknown_roster_is_404(client, operator):
    member = create_member(client, operator)

    assert_problem(
        client.post(
            f"/v1/rosters/{uuid.uuid4()}/members/remove",
            json={"member_ids": [member]},
            headers=operator,
        ),
        404,
    )
    assert_problem(
        client.delete(f"/v1/rosters/{uuid.uuid4()}/members/{member}", headers=operator), 404
    )


def test_deleting_a_member_removes_it_from_rosters(client, operator, db):
    roster = create_roster(client, operator, "Editors")
    leaving, staying = (create_member(client, operator) for _ in range(2))
    assert add_members(client, operator, roster["id"], [leaving, staying]).status_code == 200

    response = client.delete(f"/v1/members/{leaving}", headers=operator)

    assert response.status_code == 204, response.text
    assert roster_member_ids(db, roster["id"]) == {uuid.UUID(staying)}
    assert client.get(f"/v1/rosters/{roster['id']}", headers=operator).json()["member_count"] == 1
    listed = client.get(f"/v1/rosters/{roster['id']}/members", headers=operator).json()
    assert [item["id"] for item in listed["items"]] == [staying]


def test_rosters_need_an_operator_key(client, auth):
    assert_problem(client.get("/v1/rosters"), 401)
    assert_problem(client.get("/v1/rosters", headers=auth(Role.VIEWER)), 403)
    assert_problem(
        client.post("/v1/rosters", json={"name": "Editors"}, headers=auth(Role.VIEWER)), 403
    )
