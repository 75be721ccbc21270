"""Members: the API contract, every bad input, secrets at rest."""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import select

from app.models import Member
from app.security import SecretBox
from tests.support.factories import PUBLIC_WEBHOOK, TEST_SECRET_KEY, assert_problem, member_payload


def create(client, headers, **overrides):
    response = client.post("/v1/members", json=member_payload(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_the_member_and_no_secret_without_webhook(client, operator):
    body = create(client, operator, email="Leila@Example.ORG")
    assert body["email"] == "leila@example.org"
    assert body["languages"] == ["fr", "ar", "en"]
    assert body["quiet_hours"] == {"start": "22:00:00", "end": "07:00:00"}
    assert body["consent"]["method"] == "written"
    assert body["webhook_secret"] is None
    fetched = client.get(f"/v1/members/{body['id']}", headers=operator).json()
    assert "webhook_secret" not in fetched
    assert fetched["name"] == "Leila Benali"


def test_defaults(client, operator):
    payload = member_payload(languages=None, themes=None, tags=None, timezone=None)
    payload.pop("quiet_hours")
    body = client.post("/v1/members", json=payload, headers=operator).json()
    assert body["languages"] == ["en"]
    assert body["themes"] == []
    assert body["timezone"] == "UTC"
    assert body["status"] == "active"


def test_values_are_normalised(client, operator):
    body = create(
        client, operator, country="ma", languages=["FR-ca", "ar", "fr-CA"], tags=["Maghreb"]
    )
    assert body["country"] == "MA"
    assert body["languages"] == ["fr-CA", "ar"]
    assert body["tags"] == ["maghreb"]


def test_webhook_secret_is_shown_once_and_stored_encrypted(client, operator, db):
    body = create(client, operator, webhook_url=PUBLIC_WEBHOOK)
    secret = body["webhook_secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    stored = db.scalar(select(Member).where(Member.id == uuid.UUID(body["id"])))
    assert stored is not None
    assert stored.webhook_secret_encrypted is not None
    assert secret.encode() not in stored.webhook_secret_encrypted
    assert SecretBox(TEST_SECRET_KEY).decrypt(stored.webhook_secret_encrypted) == secret
    assert "webhook_secret" not in client.get(f"/v1/members/{body['id']}", headers=operator).json()


def test_rotating_the_webhook_secret(client, operator, db):
    body = create(client, operator, webhook_url=PUBLIC_WEBHOOK)
    rotated = client.post(f"/v1/members/{body['id']}/webhook-secret", headers=operator)
    assert rotated.status_code == 200
    new_secret = rotated.json()["webhook_secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != body["webhook_secret"]
    stored = db.get(Member, uuid.UUID(body["id"]))
    assert stored is not None
    assert stored.webhook_secret_encrypted is not None
    assert SecretBox(TEST_SECRET_KEY).decrypt(stored.webhook_secret_encrypted) == new_secret


def test_rotating_without_a_webhook_is_a_conflict(client, operator):
    body = create(client, operator)
    assert_problem(client.post(f"/v1/members/{body['id']}/webhook-secret", headers=operator), 409)


def test_duplicate_email_is_409_whatever_the_case(client, operator):
    create(client, operator, email="same@example.org")
    response = client.post(
        "/v1/members", json=member_payload(email="SAME@example.org"), headers=operator
    )
    assert_problem(response, 409, "email")


def test_webhook_only_member(client, operator):
    body = create(client, operator, email=None, webhook_url=PUBLIC_WEBHOOK)
    assert body["email"] is None
    assert body["webhook_secret"].startswith("whsec_")


BAD_INPUTS = [
    ("unknown field", {"nickname": "x"}, "nickname"),
    ("privileged field", {"id": str(uuid.uuid4())}, "id"),
    ("invalid email", {"email": "not-an-email"}, "email"),
    ("email with a line break", {"email": "a@example.org\r\nBcc: b@example.org"}, "email"),
    ("unknown network", {"network": "bloggers"}, "network"),
    ("unknown theme", {"themes": ["sports"]}, "themes"),
    ("bad country", {"country": "XX"}, "country"),
    ("country too long", {"country": "MAR"}, "country"),
    ("bad language tag", {"languages": ["english"]}, "languages"),
    ("no language", {"languages": []}, "languages"),
    ("bad time zone", {"timezone": "Mars/Olympus"}, "timezone"),
    ("quiet hours equal", {"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
    ("quiet hours not a time", {"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours"),
    ("bad status", {"status": "deleted"}, "status"),
    ("consent missing", {"consent": None}, "consent"),
    (
        "consent method",
        {"consent": {"given_at": "2026-01-01T00:00:00Z", "method": "telepathy"}},
        "consent",
    ),
    (
        "consent naive time",
        {"consent": {"given_at": "2026-01-01T00:00:00", "method": "email"}},
        "consent",
    ),
    ("no channel", {"email": None}, "body"),
    ("NUL in name", {"name": "Leila\x00"}, "name"),
    ("line break in title", {"title": "Editor\nBcc: x"}, "title"),
    ("blank name", {"name": "   "}, "name"),
    ("name too long", {"name": "x" * 201}, "name"),
    ("bad tag", {"tags": ["two words"]}, "tags"),
    ("webhook not https", {"webhook_url": "http://93.184.215.14/h"}, "webhook_url"),
    ("webhook loopback", {"webhook_url": "https://127.0.0.1/h"}, "webhook_url"),
    ("webhook private", {"webhook_url": "https://10.1.2.3/h"}, "webhook_url"),
    (
        "webhook link-local metadata",
        {"webhook_url": "https://169.254.169.254/latest"},
        "webhook_url",
    ),
    ("webhook IPv6 loopback", {"webhook_url": "https://[::1]/h"}, "webhook_url"),
    ("webhook IPv4-mapped", {"webhook_url": "https://[::ffff:127.0.0.1]/h"}, "webhook_url"),
    ("webhook localhost", {"webhook_url": "https://localhost/h"}, "webhook_url"),
    ("webhook unresolvable", {"webhook_url": "https://no-such-host.invalid/h"}, "webhook_url"),
    ("webhook credentials", {"webhook_url": "https://user:pw@93.184.215.14/h"}, "webhook_url"),
    ("webhook scheme", {"webhook_url": "ftp://93.184.215.14/h"}, "webhook_url"),
]


@pytest.mark.parametrize(("case", "override", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.usefixtures("case")
def test_bad_input_is_a_problem_naming_the_field_and_writes_nothing(
    client, operator, db, override, field
):
    payload = member_payload()
    for key, value in override.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    response = client.post("/v1/members", json=payload, headers=operator)
    problem = assert_problem(response, 422, field)
    assert problem["detail"]
    assert db.scalar(select(Member.id)) is None


def test_malformed_json_is_422(client, operator):
    response = client.post(
        "/v1/members",
        content=b'{"network": "editors",',
        headers={**operator, "Content-Type": "application/json"},
    )
    assert_problem(response, 422)


def test_non_utf8_json_is_422(client, operator):
    response = client.post(
        "/v1/members",
        content='{"name": "Ré"}'.encode("latin-1"),
        headers={**operator, "Content-Type": "application/json"},
    )
    assert_problem(response, 422)


def test_oversized_body_is_413_and_writes_nothing(client, operator, db, settings):
    payload = member_payload(tags=["t"], organization="x" * 100)
    body = (str(payload).replace("'", '"') + " " * (settings.max_body_bytes + 10)).encode()
    response = client.post(
        "/v1/members", content=body, headers={**operator, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)
    assert db.scalar(select(Member.id)) is None


def test_oversized_body_without_content_length_is_413(client, operator, settings):
    chunk = b" " * 65536

    def stream():
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk

    response = client.post(
        "/v1/members", content=stream(), headers={**operator, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)


@pytest.mark.usefixtures("engine")
def test_private_webhooks_are_allowed_only_with_the_setting(private_client, api_keys):
    from app.models import Role

    headers = {"Authorization": f"Bearer {api_keys[Role.OPERATOR]}"}
    response = private_client.post(
        "/v1/members", json=member_payload(webhook_url="http://127.0.0.1:9/hook"), headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["webhook_secret"].startswith("whsec_")


def test_get_unknown_and_malformed_ids(client, operator):
    assert_problem(client.get(f"/v1/members/{uuid.uuid4()}", headers=operator), 404)
    assert_problem(client.get("/v1/members/not-a-uuid", headers=operator), 422, "member_id")


def test_patch_changes_only_given_fields(client, operator):
    body = create(client, operator)
    response = client.patch(
        f"/v1/members/{body['id']}",
        json={"status": "paused", "title": None, "languages": ["ar"]},
        headers=operator,
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["status"] == "paused"
    assert patched["title"] is None
    assert patched["languages"] == ["ar"]
    assert patched["name"] == body["name"]
    assert patched["email"] == body["email"]


def test_patch_adding_a_webhook_returns_its_secret_once(client, operator):
    body = create(client, operator)
    patched = client.patch(
        f"/v1/members/{body['id']}", json={"webhook_url": PUBLIC_WEBHOOK}, headers=operator
    ).json()
    assert patched["webhook_secret"].startswith("whsec_")
    again = client.patch(
        f"/v1/members/{body['id']}", json={"webhook_url": PUBLIC_WEBHOOK + "2"}, headers=operator
    ).json()
    assert again["webhook_secret"] is None  # same secret kept when only the URL changes


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"email": None}, "body"),  # the only channel
        ({"name": None}, "body"),
        ({"country": "ZZ"}, "country"),
        ({"unknown": 1}, "unknown"),
        ({"webhook_url": "https://192.168.1.1/x"}, "webhook_url"),
    ],
)
def test_bad_patch_changes_nothing(client, operator, patch, field):
    body = create(client, operator)
    assert_problem(
        client.patch(f"/v1/members/{body['id']}", json=patch, headers=operator), 422, field
    )
    after = client.get(f"/v1/members/{body['id']}", headers=operator).json()
    assert after == {k: v for k, v in body.items() if k != "webhook_secret"}


def test_patch_to_a_taken_email_is_409(client, operator):
    create(client, operator, email="first@example.org")
    second = create(client, operator, email="second@example.org")
    response = client.patch(
        f"/v1/members/{second['id']}", json={"email": "FIRST@example.org"}, headers=operator
    )
    assert_problem(response, 409, "email")


def test_delete(client, operator):
    body = create(client, operator)
    assert client.delete(f"/v1/members/{body['id']}", headers=operator).status_code == 204
    assert_problem(client.get(f"/v1/members/{body['id']}", headers=operator), 404)
    assert_problem(client.delete(f"/v1/members/{body['id']}", headers=operator), 404)


def test_list_filters(client, operator):
    leila = create(
        client,
        operator,
        name="Leila Benali",
        network="editors",
        country="MA",
        languages=["fr", "ar"],
        themes=["religious-hatred"],
        tags=["maghreb"],
    )
    john = create(
        client,
        operator,
        name="John Carter",
        network="personalities",
        country="GB",
        languages=["en"],
        themes=["social-cohesion"],
        tags=["tv"],
        organization="BBC",
    )
    paused = create(
        client,
        operator,
        name="Amal Haddad",
        country="TN",
        languages=["ar"],
        status="paused",
        tags=["maghreb"],
    )

    def ids(query: str) -> set[str]:
        response = client.get(f"/v1/members?{query}", headers=operator)
        assert response.status_code == 200, response.text
        return {m["id"] for m in response.json()["items"]}

    assert ids("") == {leila["id"], john["id"], paused["id"]}
    assert ids("network=personalities") == {john["id"]}
    assert ids("language=ar") == {leila["id"], paused["id"]}
    assert ids("language=AR") == {leila["id"], paused["id"]}
    assert ids("theme=social-cohesion") == {john["id"]}
    assert ids("country=ma") == {leila["id"]}
    assert ids("tag=maghreb&status=active") == {leila["id"]}
    assert ids("status=paused") == {paused["id"]}
    assert ids("q=carter") == {john["id"]}
    assert ids("q=bbc") == {john["id"]}
    assert ids(f"q={leila['email'][:10]}") == {leila["id"]}
    assert ids("q=%25") == set()  # a literal %, not a wildcard
    assert ids("q=_") == set()


@pytest.mark.parametrize(
    "query",
    [
        "network=bloggers",
        "theme=sports",
        "country=XX",
        "language=english",
        "status=gone",
        "limit=0",
        "limit=501",
        "cursor=not-a-cursor",
        "q=" + "x" * 201,
        "q=a%00b",
    ],
)
def test_bad_list_queries_are_422(client, operator, query):
    assert_problem(client.get(f"/v1/members?{query}", headers=operator), 422)


def test_cursor_pagination_sees_every_member_once(client, operator):
    created = {create(client, operator, name=f"Member {i}")["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/members?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=operator).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(created)
    assert set(seen) == created
