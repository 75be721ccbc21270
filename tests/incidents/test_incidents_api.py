"""Incidents API without a worker: the declaration, its ledger rows, the lifecycle, reads.

Nothing consumes the broker here: each write only rings the doorbell; what matters is what
the database holds once the request has returned.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.deliveries import ledger
from app.models import (
    Briefing,
    Delivery,
    Incident,
    IncidentTarget,
    ReferenceCounter,
    Role,
)
from app.models.base import utcnow
from tests.support.factories import (
    PUBLIC_WEBHOOK,
    assert_problem,
    briefing,
    declare_body,
    member_payload,
)

Headers = dict[str, str]
Row = tuple[Any, ...]


# --- helpers -------------------------------------------------------------------------------


def new_member(
    client: TestClient,
    headers: Headers,
    *,
    webhook: bool = False,
    by_email: bool = True,
    quiet_hours: dict[str, str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A member without quiet hours (unless given), by email and optionally webhook."""
    payload = member_payload(**overrides)
    payload.pop("quiet_hours", None)
    if quiet_hours is not None:
        payload["quiet_hours"] = quiet_hours
    if webhook:
        payload["webhook_url"] = PUBLIC_WEBHOOK
    if not by_email:
        payload.pop("email", None)
    response = client.post("/v1/members", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def declare(
    client: TestClient, headers: Headers, *, key: str | None = None, **overrides: Any
) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/v1/incidents", json=declare_body(**overrides), headers={**headers, **extra}
    )


def declared(client: TestClient, headers: Headers, **overrides: Any) -> dict[str, Any]:
    response = declare(client, headers, **overrides)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def ledger_rows(db: Session, incident_id: str) -> list[Row]:
    """(member_id, channel, status, language, version, next_attempt_at, last_error)."""
    db.rollback()
    rows = db.execute(
        select(
            Delivery.member_id,
            Delivery.channel,
            Delivery.status,
            Delivery.language,
            Briefing.version,
            Delivery.next_attempt_at,
            Delivery.last_error,
        )
        .join(Briefing, Briefing.id == Delivery.briefing_id)
        .where(Delivery.incident_id == uuid.UUID(incident_id))
        .order_by(Delivery.id)
    )
    return [tuple(row) for row in rows]


def pairs(rows: list[Row], version: int | None = None) -> set[tuple[str, str]]:
    """(member id, channel) of the rows (of one version)."""
    return {(str(r[0]), r[1]) for r in rows if version is None or r[4] == version}


def targets(db: Session, incident_id: str) -> set[str]:
    db.rollback()
    return {
        str(m)
        for m in db.scalars(
            select(IncidentTarget.member_id).where(
                IncidentTarget.incident_id == uuid.UUID(incident_id)
            )
        )
    }


def table_counts(db: Session) -> dict[str, int]:
    db.rollback()
    return {
        model.__name__: db.scalar(select(func.count()).select_from(model)) or 0
        for model in (Incident, Briefing, Delivery, IncidentTarget, ReferenceCounter)
    }


def move(
    db: Session,
    incident_id: str,
    member_id: str,
    to_status: str,
    *,
    channel: str | None = None,
    from_status: str = "pending",
) -> int:
    """Simulate the worker: an UPDATE of the ledger (and its counters) for one member."""
    where = and_(
        Delivery.incident_id == uuid.UUID(incident_id),
        Delivery.member_id == uuid.UUID(member_id),
    )
    if channel is not None:
        where = and_(where, Delivery.channel == channel)
    now = utcnow()
    values: dict[str, Any] = {"sent_at": now} if to_status == "sent" else {}
    changed = ledger.transition(
        db, where=where, from_status=from_status, to_status=to_status, values=values, now=now
    )
    db.commit()
    return len(changed)


def entry(subject: str, body: str, *points: str) -> dict[str, Any]:
    return {"subject": subject, "body": body, "talking_points": list(points)}


@pytest.fixture
def viewer(auth: Any) -> Headers:
    headers: Headers = auth(Role.VIEWER)
    return headers


# --- declaring -----------------------------------------------------------------------------


@pytest.mark.usefixtures("db")
def test_declare_answers_202_with_a_sequential_reference_and_links(client, operator):
    new_member(client, operator, network="editors")
    new_member(client, operator, network="personalities", webhook=True)
    year = datetime.now(UTC).year

    response = declare(client, operator)
    assert response.status_code == 202, response.text
    first = response.json()
    uuid.UUID(first["id"])
    assert first["reference"] == f"RRMM-{year}-0001"
    assert first["status"] == "mobilizing"
    assert first["targeted"] == 2
    assert first["latest_version"] == 1
    assert first["ended_at"] is None
    assert first["severity"] == "severe"
    assert first["channels"] == ["email", "webhook"]
    assert first["responses"] == [
        "acknowledged",
        "will_engage",
        "unavailable",
        "need_briefing_call",
    ]
    base = f"/v1/incidents/{first['id']}"
    assert first["links"] == {
        "self": base,
        "status": f"{base}/status",
        "deliveries": f"{base}/deliveries",
    }
    assert response.headers["Location"] == base

    second = declared(client, operator)
    assert second["reference"] == f"RRMM-{year}-0002"
    assert second["id"] != first["id"]
    assert client.get(first["links"]["self"], headers=operator).json()["reference"] == (
        f"RRMM-{year}-0001"
    )


def test_one_ledger_row_per_member_and_channel_in_the_member_language(client, operator, db):
    canadian = new_member(client, operator, languages=["fr-CA"], webhook=True)
    german = new_member(client, operator, languages=["de"], webhook=True)
    arabic = new_member(client, operator, languages=["ar", "en"])  # email only
    hook_only = new_member(client, operator, languages=["en"], webhook=True, by_email=False)
    paused = new_member(client, operator, languages=["fr"], status="paused", webhook=True)

    incident = declared(client, operator, briefing=briefing(en="", fr="", ar=""))
    assert incident["targeted"] == 4

    rows = ledger_rows(db, incident["id"])
    assert len(rows) == len(pairs(rows))  # no duplicate (member, channel)
    assert pairs(rows) == {
        (canadian["id"], "email"),
        (canadian["id"], "webhook"),
        (german["id"], "email"),
        (german["id"], "webhook"),
        (arabic["id"], "email"),
        (hook_only["id"], "webhook"),
    }
    language = {str(r[0]): r[3] for r in rows}
    assert language == {
        canadian["id"]: "fr",
        german["id"]: "en",
        arabic["id"]: "ar",
        hook_only["id"]: "en",
    }
    assert {r[2] for r in rows} == {"pending"}
    assert {r[4] for r in rows} == {1}
    assert {r[5] for r in rows} == {None}  # severe: no quiet-hours deferral
    assert paused["id"] not in targets(db, incident["id"])
    assert targets(db, incident["id"]) == {
        canadian["id"],
        german["id"],
        arabic["id"],
        hook_only["id"],
    }


@pytest.mark.parametrize(
    ("order", "expected"),
    [(("fr", "ar"), "fr"), (("ar", "fr"), "ar")],
)
def test_without_english_the_briefing_first_language_is_the_fallback(
    client, operator, db, order, expected
):
    german = new_member(client, operator, languages=["de"])
    arabic = new_member(client, operator, languages=["ar-EG"])
    content = {language: entry(f"S {language}", f"B {language}") for language in order}
    incident = declared(client, operator, briefing=content, require_english=False)
    language = {str(r[0]): r[3] for r in ledger_rows(db, incident["id"])}
    assert language == {german["id"]: expected, arabic["id"]: "ar"}
    versions = client.get(f"/v1/incidents/{incident['id']}/briefings", headers=operator).json()
    assert versions[0]["languages"] == list(order)


def test_audience_is_the_union_of_sources_narrowed_by_every_filter(client, operator, db):
    m1 = new_member(
        client,
        operator,
        network="editors",
        country="MA",
        languages=["fr", "ar"],
        themes=["religious-hatred"],
        tags=["maghreb"],
    )["id"]
    m2 = new_member(
        client,
        operator,
        network="personalities",
        country="FR",
        languages=["fr"],
        themes=["cultural-diversity"],
        tags=["tv"],
    )["id"]
    m3 = new_member(
        client,
        operator,
        network="editors",
        country="EG",
        languages=["ar", "en"],
        themes=["religious-hatred", "citizenship"],
        tags=["print"],
    )["id"]
    m4 = new_member(
        client,
        operator,
        network="personalities",
        country="MA",
        languages=["en"],
        themes=["social-cohesion"],
        tags=["maghreb", "tv"],
    )["id"]
    m5 = new_member(
        client,
        operator,
        network="editors",
        country="MA",
        languages=["fr"],
        themes=["religious-hatred"],
        tags=["maghreb"],
        status="paused",
    )["id"]
    roster = client.post("/v1/rosters", json={"name": "Focal group"}, headers=operator).json()
    added = client.post(
        f"/v1/rosters/{roster['id']}/members", json={"member_ids": [m2, m5]}, headers=operator
    )
    assert added.status_code == 200, added.text
    both = ["editors", "personalities"]

    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"networks": ["editors"]}, {m1, m3}),
        ({"rosters": [roster["id"]]}, {m2}),  # the paused member is not targeted
        ({"member_ids": [m4, m5]}, {m4}),
        ({"networks": ["editors"], "member_ids": [m4]}, {m1, m3, m4}),
        ({"rosters": [roster["id"]], "member_ids": [m2, m3]}, {m2, m3}),
        ({"networks": both, "countries": ["ma"]}, {m1, m4}),
        ({"networks": both, "languages": ["ar"]}, {m1, m3}),
        ({"networks": both, "themes": ["religious-hatred"]}, {m1, m3}),
        ({"networks": both, "themes": ["citizenship", "social-cohesion"]}, {m3, m4}),
        ({"networks": both, "tags": ["tv"]}, {m2, m4}),
        ({"networks": both, "countries": ["MA"], "tags": ["tv"]}, {m4}),
        ({"networks": both, "countries": ["MA", "EG"], "languages": ["ar"]}, {m1, m3}),
        ({"rosters": [roster["id"]], "networks": ["editors"], "languages": ["fr"]}, {m1, m2}),
    ]
    for audience, expected in cases:
        incident = declared(client, operator, audience=audience)
        assert incident["targeted"] == len(expected), audience
        assert targets(db, incident["id"]) == expected, audience
        assert {str(r[0]) for r in ledger_rows(db, incident["id"])} == expected, audience


def test_channels_restrict_rows_and_who_is_targeted(client, operator, db):
    both = new_member(client, operator, webhook=True)
    hook_only = new_member(client, operator, webhook=True, by_email=False)
    mail_only = new_member(client, operator)

    incident = declared(client, operator, channels=["email"])
    assert incident["channels"] == ["email"]
    rows = ledger_rows(db, incident["id"])
    assert pairs(rows) == {(both["id"], "email"), (mail_only["id"], "email")}

    incident = declared(client, operator, channels=["webhook"])
    assert incident["channels"] == ["webhook"]
    assert pairs(ledger_rows(db, incident["id"])) == {
        (both["id"], "webhook"),
        (hook_only["id"], "webhook"),
    }

    # Nobody in this audience has an email address: nothing to send, so nothing declared.
    before = table_counts(db)
    response = declare(
        client, operator, channels=["email"], audience={"member_ids": [hook_only["id"]]}
    )
    body = assert_problem(response, 422, "audience")
    assert "matches no" in body["detail"]
    assert table_counts(db) == before


def test_members_the_channels_cannot_reach_are_not_targeted(client, operator, db):
    both = new_member(client, operator, webhook=True)
    hook_only = new_member(client, operator, webhook=True, by_email=False)
    mail_only = new_member(client, operator)

    incident = declared(client, operator, channels=["email"])
    assert targets(db, incident["id"]) == {both["id"], mail_only["id"]}
    assert incident["targeted"] == 2
    incident = declared(client, operator, channels=["webhook"])
    assert targets(db, incident["id"]) == {both["id"], hook_only["id"]}
    assert incident["targeted"] == 2

    # Nor when they newly match at an update.
    incident = declared(client, operator, channels=["email"])
    new_member(client, operator, webhook=True, by_email=False)
    response = client.post(
        f"/v1/incidents/{incident['id']}/updates",
        json={"briefing": briefing(en="")},
        headers=operator,
    )
    assert response.status_code == 202, response.text
    assert response.json()["targeted"] == 2
    assert targets(db, incident["id"]) == {both["id"], mail_only["id"]}


def test_idempotency_key(client, operator, admin, db):
    new_member(client, operator, webhook=True)
    first = declare(client, operator, key="retry-1")
    assert first.status_code == 202, first.text
    counts = table_counts(db)

    again = declare(client, operator, key="retry-1")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["reference"] == first.json()["reference"]
    assert again.headers["Location"] == first.headers["Location"]
    assert table_counts(db) == counts

    other_body = declare(client, operator, key="retry-1", title="Another incident")
    problem = assert_problem(other_body, 422)
    fields = [e["field"].lower() for e in problem["errors"]]
    assert "header.idempotency-key" in fields
    assert "idempotency-key" in problem["detail"].lower()
    assert table_counts(db) == counts

    different = declare(client, operator, key="retry-2")
    assert different.status_code == 202
    assert different.json()["id"] != first.json()["id"]
    # Keys belong to the caller: another API key's same key is another request.
    by_admin = declare(client, admin, key="retry-1")
    assert by_admin.status_code == 202
    assert len({first.json()["id"], different.json()["id"], by_admin.json()["id"]}) == 3
    db.rollback()
    assert db.scalar(select(func.count()).select_from(Incident)) == 3


def test_a_malformed_idempotency_key_is_a_422(client, operator, db):
    new_member(client, operator)
    response = declare(client, operator, key="has space")
    problem = assert_problem(response, 422)
    assert any(e["field"].lower() == "header.idempotency-key" for e in problem["errors"])
    assert table_counts(db)["Incident"] == 0


def test_an_audience_matching_nobody_is_a_422(client, operator, db):
    new_member(client, operator, network="editors", country="MA")
    response = declare(client, operator, audience={"networks": ["personalities"]})
    body = assert_problem(response, 422, "body.audience")
    assert "matches no" in body["detail"]
    response = declare(client, operator, audience={"networks": ["editors"], "countries": ["FR"]})
    assert_problem(response, 422, "body.audience")
    assert set(table_counts(db).values()) == {0}


def test_unknown_roster_or_member_is_a_422(client, operator, db):
    new_member(client, operator)
    missing = str(uuid.uuid4())
    response = declare(client, operator, audience={"networks": ["editors"], "rosters": [missing]})
    body = assert_problem(response, 422, "body.audience.rosters")
    assert missing in str(body["errors"])
    response = declare(client, operator, audience={"member_ids": [missing]})
    body = assert_problem(response, 422, "body.audience.member_ids")
    assert missing in str(body["errors"])
    assert set(table_counts(db).values()) == {0}


def _with_entry(**changes: Any) -> dict[str, Any]:
    content = briefing(en="", fr="")
    content["en"] = {**content["en"], **changes}
    return content


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing English", {"briefing": briefing(fr="", ar="")}, "briefing"),
    ("bad severity", {"severity": "critical"}, "body.severity"),
    ("bad urgency", {"urgency": "now"}, "body.urgency"),
    ("bad mode", {"mode": "drill"}, "body.mode"),
    ("unknown field", {"colour": "red"}, "body.colour"),
    ("missing title", {"title": None}, "body.title"),
    ("blank title", {"title": "   "}, "body.title"),
    (
        "bad language key",
        {"briefing": {**briefing(en=""), "not a language!": entry("s", "b")}},
        "body.briefing",
    ),
    ("empty briefing", {"briefing": {}}, "body.briefing"),
    ("empty audience", {"audience": {}}, "body.audience"),
    ("audience unknown field", {"audience": {"networks": ["editors"], "x": 1}}, "body.audience"),
    ("bad network", {"audience": {"networks": ["bloggers"]}}, "body.audience.networks"),
    ("bad country", {"countries": ["XX"]}, "body.countries"),
    (
        "bad audience country",
        {"audience": {"networks": ["editors"], "countries": ["ZZ"]}},
        "body.audience.countries",
    ),
    ("bad theme", {"themes": ["weather"]}, "body.themes"),
    (
        "subject with CR/LF",
        {"briefing": _with_entry(subject="Hi\r\nBcc: x@example.org")},
        "body.briefing.en.subject",
    ),
    ("subject with LF", {"briefing": _with_entry(subject="Hi\nthere")}, "body.briefing.en.subject"),
    ("empty body", {"briefing": _with_entry(body="")}, "body.briefing.en.body"),
    (
        "too many talking points",
        {"briefing": _with_entry(talking_points=["p"] * 21)},
        "body.briefing.en.talking_points",
    ),
    ("unknown channel", {"channels": ["sms"]}, "body.channels"),
    ("no channel", {"channels": []}, "body.channels"),
    ("bad response slug", {"responses": ["Yes please"]}, "body.responses"),
]


@pytest.mark.parametrize(
    ("overrides", "field"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client, operator, db, overrides, field
):
    new_member(client, operator, webhook=True)
    body = declare_body(**overrides)
    for key in [k for k, v in overrides.items() if v is None]:
        body.pop(key)
    response = client.post("/v1/incidents", json=body, headers=operator)
    problem = assert_problem(response, 422)
    named = [e["field"] for e in problem["errors"]] + [problem["detail"]]
    assert any(field in text for text in named), problem
    assert set(table_counts(db).values()) == {0}


# --- updates -------------------------------------------------------------------------------


def test_update_adds_a_version_newcomers_and_supersedes_unsent_rows(client, operator, db):
    sent_one = new_member(client, operator, languages=["fr-CA"], webhook=True)
    waiting = new_member(client, operator, languages=["ar"])
    leaving = new_member(client, operator, languages=["en"])
    incident = declared(
        client,
        operator,
        audience={"networks": ["editors"], "countries": ["MA"]},
        briefing=briefing(en="", fr="", ar=""),
    )
    iid = incident["id"]
    assert move(db, iid, sent_one["id"], "sent", channel="email") == 1
    patched = client.patch(
        f"/v1/members/{leaving['id']}", json={"status": "paused"}, headers=operator
    )
    assert patched.status_code == 200, patched.text
    newcomer = new_member(client, operator, languages=["fr"])
    outsider = new_member(client, operator, country="FR")

    update = {
        "briefing": {
            "en": entry("Update subject", "Update body.", "Stay calm"),
            "fr": entry("Sujet de la mise à jour", "Corps.", "Restez calme"),
        }
    }
    response = client.post(f"/v1/incidents/{iid}/updates", json=update, headers=operator)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["latest_version"] == 2
    assert body["status"] == "mobilizing"
    assert body["targeted"] == 4  # the paused member stays targeted, but gets nothing new

    assert targets(db, iid) == {sent_one["id"], waiting["id"], leaving["id"], newcomer["id"]}
    assert outsider["id"] not in targets(db, iid)

    rows = ledger_rows(db, iid)
    v1 = {(str(r[0]), r[1]): r for r in rows if r[4] == 1}
    v2 = {(str(r[0]), r[1]): r for r in rows if r[4] == 2}
    assert v1[(sent_one["id"], "email")][2] == "sent"
    for key, row in v1.items():
        if key != (sent_one["id"], "email"):
            assert row[2] == "superseded", row
            assert "superseded" in row[6]
    assert set(v2) == {
        (sent_one["id"], "email"),
        (sent_one["id"], "webhook"),
        (waiting["id"], "email"),
        (newcomer["id"], "email"),
    }
    assert {r[2] for r in v2.values()} == {"pending"}
    # Languages follow the new version's languages: no Arabic in it, so English.
    assert {k[0]: r[3] for k, r in v2.items()} == {
        sent_one["id"]: "fr",
        waiting["id"]: "en",
        newcomer["id"]: "fr",
    }

    versions = client.get(f"/v1/incidents/{iid}/briefings", headers=operator)
    assert versions.status_code == 200, versions.text
    listed = versions.json()
    assert [(v["version"], v["kind"]) for v in listed] == [(1, "declared"), (2, "updated")]
    assert listed[0]["languages"] == ["en", "fr", "ar"]
    assert listed[0]["content"] == briefing(en="", fr="", ar="")
    assert listed[1]["languages"] == ["en", "fr"]
    assert listed[1]["content"] == update["briefing"]
    assert status_matches_ledger(client, operator, db, iid)


def test_update_validates_its_briefing(client, operator, db):
    new_member(client, operator)
    incident = declared(client, operator)
    url = f"/v1/incidents/{incident['id']}/updates"
    counts = table_counts(db)
    response = client.post(url, json={"briefing": briefing(fr="")}, headers=operator)
    assert "briefing" in assert_problem(response, 422)["detail"]
    response = client.post(url, json={"briefing": briefing(en=""), "x": 1}, headers=operator)
    assert_problem(response, 422, "body.x")
    response = client.post(url, json={}, headers=operator)
    assert_problem(response, 422, "body.briefing")
    assert table_counts(db) == counts


# --- resolve and cancel --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kind", "english_subject"),
    [("resolve", "resolved", "Stand-down"), ("cancel", "cancelled", "Cancelled")],
)
def test_ending_stops_unsent_rows_and_tells_only_members_already_briefed(
    client, operator, db, action, kind, english_subject
):
    briefed = new_member(client, operator, languages=["fr-CA"], webhook=True)
    pending = new_member(client, operator, languages=["en"], webhook=True)
    failed = new_member(client, operator, languages=["ar"])
    incident = declared(client, operator)
    iid = incident["id"]
    assert move(db, iid, briefed["id"], "sent", channel="email") == 1
    assert move(db, iid, failed["id"], "failed") == 1

    response = client.post(f"/v1/incidents/{iid}/{action}", headers=operator)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == kind
    assert body["ended_at"] is not None
    assert datetime.fromisoformat(body["ended_at"]) >= datetime.fromisoformat(body["declared_at"])
    assert body["latest_version"] == 2

    rows = ledger_rows(db, iid)
    first = {(str(r[0]), r[1]): r for r in rows if r[4] == 1}
    assert first[(briefed["id"], "email")][2] == "sent"
    assert first[(failed["id"], "email")][2] == "failed"
    for key in [(briefed["id"], "webhook"), (pending["id"], "email"), (pending["id"], "webhook")]:
        assert first[key][2] == "cancelled"
        assert kind in first[key][6]
    # Only the member who received something hears about the end, on each channel.
    second = [r for r in rows if r[4] == 2]
    assert pairs(second) == {(briefed["id"], "email"), (briefed["id"], "webhook")}
    assert {r[2] for r in second} == {"pending"}
    assert {r[3] for r in second} == {"fr"}

    versions = client.get(f"/v1/incidents/{iid}/briefings", headers=operator).json()
    assert [v["kind"] for v in versions] == ["declared", kind]
    notice = versions[1]
    assert notice["languages"] == ["en", "fr", "ar"]
    assert set(notice["content"]) == {"en", "fr", "ar"}
    assert notice["content"]["en"]["subject"] == english_subject
    assert all(e["body"] and e["subject"] for e in notice["content"].values())
    assert status_matches_ledger(client, operator, db, iid)

    fetched = client.get(f"/v1/incidents/{iid}", headers=operator).json()
    assert fetched["status"] == kind
    assert fetched["ended_at"] == body["ended_at"]


@pytest.mark.usefixtures("db")
def test_standard_notices_in_the_working_languages(client, operator):
    new_member(client, operator)
    resolved = declared(client, operator)
    cancelled = declared(client, operator)
    client.post(f"/v1/incidents/{resolved['id']}/resolve", headers=operator)
    client.post(f"/v1/incidents/{cancelled['id']}/cancel", headers=operator)

    def notice(incident_id: str) -> dict[str, Any]:
        versions = client.get(f"/v1/incidents/{incident_id}/briefings", headers=operator).json()
        content: dict[str, Any] = versions[-1]["content"]
        return content

    stand_down = notice(resolved["id"])
    assert stand_down["fr"]["subject"] == "Fin d'alerte"
    assert stand_down["ar"]["subject"] == "إنهاء التنبيه"
    assert "no further action" in stand_down["en"]["body"]
    cancel = notice(cancelled["id"])
    assert cancel["fr"]["subject"] == "Annulé"
    assert cancel["ar"]["subject"] == "إلغاء"
    assert "disregard" in cancel["en"]["body"]


@pytest.mark.usefixtures("db")
def test_resolve_with_a_briefing_of_its_own(client, operator):
    new_member(client, operator, languages=["fr"])
    incident = declared(client, operator)
    url = f"/v1/incidents/{incident['id']}/resolve"
    response = client.post(
        url, json={"briefing": {"fr": entry("Fin", "C'est fini.")}}, headers=operator
    )
    assert "briefing" in assert_problem(response, 422)["detail"]
    content = {"en": entry("Over", "It is over."), "fr": entry("Fin", "C'est fini.")}
    response = client.post(url, json={"briefing": content}, headers=operator)
    assert response.status_code == 202, response.text
    versions = client.get(f"/v1/incidents/{incident['id']}/briefings", headers=operator).json()
    assert versions[-1]["kind"] == "resolved"
    assert versions[-1]["content"] == content


@pytest.mark.parametrize("ending", ["resolve", "cancel"])
def test_an_ended_incident_accepts_no_more_changes(client, operator, db, ending):
    new_member(client, operator)
    incident = declared(client, operator)
    base = f"/v1/incidents/{incident['id']}"
    assert client.post(f"{base}/{ending}", headers=operator).status_code == 202
    counts = table_counts(db)
    update = {"briefing": briefing(en="")}
    assert_problem(client.post(f"{base}/updates", json=update, headers=operator), 409)
    assert_problem(client.post(f"{base}/resolve", headers=operator), 409)
    assert_problem(client.post(f"{base}/cancel", headers=operator), 409)
    assert table_counts(db) == counts


# --- reading -------------------------------------------------------------------------------


def status_matches_ledger(client: TestClient, headers: Headers, db: Session, iid: str) -> bool:
    """GET /status equals the counts of the ledger rows, by status and by channel."""
    response = client.get(f"/v1/incidents/{iid}/status", headers=headers)
    assert response.status_code == 200, response.text
    deliveries = response.json()["deliveries"]
    rows = ledger_rows(db, iid)
    by_status = dict(Counter(r[2] for r in rows))
    by_channel: dict[str, dict[str, int]] = {}
    for (channel, state), count in Counter((r[1], r[2]) for r in rows).items():
        by_channel.setdefault(channel, {})[state] = count
    assert deliveries == {"by_status": by_status, "by_channel": by_channel}
    return True


def test_status_reads_counters_that_match_the_ledger(client, operator, viewer, db):
    members = [new_member(client, operator, webhook=True) for _ in range(4)]
    members.append(new_member(client, operator, by_email=False, webhook=True))
    incident = declared(client, operator)
    iid = incident["id"]
    status = client.get(f"/v1/incidents/{iid}/status", headers=viewer).json()
    assert status["id"] == iid
    assert status["reference"] == incident["reference"]
    assert status["status"] == "mobilizing"
    assert status["mode"] == "actual"
    assert status["severity"] == "severe"
    assert status["targeted"] == 5
    assert status["deliveries"] == {
        "by_status": {"pending": 9},
        "by_channel": {"email": {"pending": 4}, "webhook": {"pending": 5}},
    }
    move(db, iid, members[0]["id"], "sent")
    move(db, iid, members[1]["id"], "sending", channel="webhook")
    move(db, iid, members[2]["id"], "retrying", channel="email")
    move(db, iid, members[3]["id"], "failed")
    assert status_matches_ledger(client, viewer, db, iid)
    assert client.get(f"/v1/incidents/{iid}/status", headers=viewer).json()["deliveries"][
        "by_status"
    ] == {"pending": 3, "sent": 2, "sending": 1, "retrying": 1, "failed": 2}


@pytest.mark.usefixtures("db")
def test_list_filters_and_paginates_newest_first(client, operator, viewer):
    new_member(client, operator)
    specs: list[dict[str, Any]] = [
        {"title": "Riots after the sermon", "severity": "minor", "mode": "actual"},
        {"title": "Cartoon republished", "severity": "severe", "mode": "exercise"},
        {"title": "Quran burning video", "severity": "extreme", "mode": "actual"},
        {"title": "Cartoon: second wave", "severity": "minor", "mode": "exercise"},
        {"title": "Hate speech on TV_show 100%", "severity": "moderate", "mode": "actual"},
    ]
    created = [declared(client, operator, **spec) for spec in specs]
    client.post(f"/v1/incidents/{created[1]['id']}/cancel", headers=operator)
    client.post(f"/v1/incidents/{created[2]['id']}/resolve", headers=operator)
    newest_first = [c["id"] for c in reversed(created)]

    def ids(**params: Any) -> list[str]:
        response = client.get("/v1/incidents", params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert ids() == newest_first
    assert ids(status="cancelled") == [created[1]["id"]]
    assert ids(status="resolved") == [created[2]["id"]]
    assert ids(status="mobilizing") == [created[4]["id"], created[3]["id"], created[0]["id"]]
    assert ids(mode="exercise") == [created[3]["id"], created[1]["id"]]
    assert ids(severity="minor") == [created[3]["id"], created[0]["id"]]
    assert ids(severity="minor", mode="exercise") == [created[3]["id"]]
    assert ids(q="cartoon") == [created[3]["id"], created[1]["id"]]
    assert ids(q="CARTOON", status="cancelled") == [created[1]["id"]]
    assert ids(q=created[2]["reference"]) == [created[2]["id"]]
    assert ids(q="tv_show 100%") == [created[4]["id"]]
    assert ids(q="_") == [created[4]["id"]]  # LIKE wildcards are taken literally
    assert ids(q="%") == [created[4]["id"]]
    assert ids(q="nothing like this") == []

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/incidents", params=params, headers=viewer).json()
        pages += 1
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 3
    listed = client.get("/v1/incidents", params={"limit": 1}, headers=viewer).json()["items"][0]
    assert listed == client.get(f"/v1/incidents/{created[4]['id']}", headers=viewer).json()

    assert_problem(
        client.get("/v1/incidents", params={"cursor": "garbage"}, headers=viewer),
        422,
        "query.cursor",
    )
    assert_problem(
        client.get("/v1/incidents", params={"status": "x"}, headers=viewer), 422, "status"
    )
    assert_problem(client.get("/v1/incidents", params={"limit": 0}, headers=viewer), 422, "limit")


def test_deliveries_list_filters_and_paginates(client, operator, db):
    first = new_member(client, operator, name="Amina Haddad", languages=["ar"], webhook=True)
    second = new_member(client, operator, name="Jean Martin", languages=["fr"])
    third = new_member(client, operator, name="Ann Lee", languages=["en"], webhook=True)
    incident = declared(client, operator)
    iid = incident["id"]
    move(db, iid, first["id"], "sent", channel="email")
    url = f"/v1/incidents/{iid}/deliveries"

    everything = client.get(url, headers=operator)
    assert everything.status_code == 200, everything.text
    items = everything.json()["items"]
    assert everything.json()["next_cursor"] is None
    assert len(items) == 5
    names = {m["id"]: m["name"] for m in (first, second, third)}
    for item in items:
        assert item["member"]["name"] == names[item["member"]["id"]]
        assert item["version"] == 1
        assert item["attempts"] == 0
        assert item["next_attempt_at"] is None
    assert {(i["member"]["id"], i["channel"], i["language"]) for i in items} == {
        (first["id"], "email", "ar"),
        (first["id"], "webhook", "ar"),
        (second["id"], "email", "fr"),
        (third["id"], "email", "en"),
        (third["id"], "webhook", "en"),
    }
    sent = [i for i in items if i["status"] == "sent"]
    assert len(sent) == 1
    assert sent[0]["sent_at"] is not None

    def listed(**params: Any) -> list[dict[str, Any]]:
        response = client.get(url, params=params, headers=operator)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()["items"]
        return result

    assert [i["member"]["id"] for i in listed(status="sent")] == [first["id"]]
    assert {i["member"]["id"] for i in listed(channel="webhook")} == {first["id"], third["id"]}
    assert {i["channel"] for i in listed(channel="webhook")} == {"webhook"}
    assert len(listed(status="pending")) == 4
    assert len(listed(status="pending", channel="email")) == 2
    assert listed(status="failed") == []

    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get(url, params=params, headers=operator).json()
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["id"] for i in items]
    assert seen == sorted(seen)

    assert_problem(client.get(url, params={"status": "lost"}, headers=operator), 422, "status")
    assert_problem(client.get(url, params={"channel": "sms"}, headers=operator), 422, "channel")
    assert_problem(client.get(url, params={"cursor": "xyz"}, headers=operator), 422, "cursor")


def test_unknown_incident_is_a_404(client, operator, viewer):
    new_member(client, operator)
    base = f"/v1/incidents/{uuid.uuid4()}"
    for path in ("", "/status", "/briefings", "/deliveries"):
        assert_problem(client.get(base + path, headers=operator), 404)
    assert_problem(client.get(base, headers=viewer), 404)
    assert_problem(client.get(base + "/status", headers=viewer), 404)
    update = {"briefing": briefing(en="")}
    assert_problem(client.post(base + "/updates", json=update, headers=operator), 404)
    assert_problem(client.post(base + "/resolve", headers=operator), 404)
    assert_problem(client.post(base + "/cancel", headers=operator), 404)
    assert_problem(client.get("/v1/incidents/not-a-uuid", headers=operator), 422)


def test_roles(client, operator, viewer, admin, db):
    new_member(client, operator)
    incident = declared(client, operator)
    base = f"/v1/incidents/{incident['id']}"
    for path in ("/v1/incidents", base, f"{base}/status"):
        assert client.get(path, headers=viewer).status_code == 200, path
        assert_problem(client.get(path), 401)
    for path in (f"{base}/briefings", f"{base}/deliveries"):
        assert_problem(client.get(path, headers=viewer), 403)
        assert client.get(path, headers=admin).status_code == 200
    counts = table_counts(db)
    assert_problem(client.post("/v1/incidents", json=declare_body(), headers=viewer), 403)
    update = {"briefing": briefing(en="")}
    assert_problem(client.post(f"{base}/updates", json=update, headers=viewer), 403)
    assert_problem(client.post(f"{base}/resolve", headers=viewer), 403)
    assert_problem(client.post(f"{base}/cancel", headers=viewer), 403)
    assert_problem(client.post("/v1/incidents", json=declare_body()), 401)
    assert table_counts(db) == counts
    assert client.get(base, headers=viewer).json()["status"] == "mobilizing"


@pytest.mark.usefixtures("db")
def test_viewer_reads_carry_no_briefing_text_nor_contact_details(client, operator, viewer):
    people = [
        new_member(client, operator, name="Zaynab Quillfeather", email="zaynab.q@example.org"),
        new_member(
            client, operator, name="Bartholomew Xerxes", webhook=True, email="bart.x@example.org"
        ),
    ]
    secret_texts = {
        "en": entry("Embargoed subject alpha", "Confidential body bravo.", "Point charlie"),
        "fr": entry("Sujet delta", "Corps echo.", "Point foxtrot"),
    }
    incident = declared(client, operator, briefing=secret_texts)
    client.post(
        f"/v1/incidents/{incident['id']}/updates",
        json={"briefing": {"en": entry("Update golf", "Body hotel.", "Point india")}},
        headers=operator,
    )
    base = f"/v1/incidents/{incident['id']}"
    texts = [
        client.get(path, headers=viewer).text for path in ("/v1/incidents", base, f"{base}/status")
    ]
    forbidden = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "talking_points",
        "Zaynab",
        "Quillfeather",
        "Bartholomew",
        "Xerxes",
        "@example.org",
        "example.org",
        "93.184.215.14",
        "whsec_",
    ]
    for text in texts:
        assert incident["reference"] in text
        for word in forbidden:
            assert word not in text, (word, text)
    for person in people:
        assert all(person["email"] not in text for text in texts)


# --- quiet hours ---------------------------------------------------------------------------


def _quiet_window_around_now(zone_name: str) -> tuple[dict[str, str], datetime]:
    """Quiet hours from an hour ago to two hours ahead (local time), and their end in UTC."""
    zone = ZoneInfo(zone_name)
    local = datetime.now(UTC).astimezone(zone)
    start = (local - timedelta(hours=1)).replace(second=0, microsecond=0)
    end = (local + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    return window, end.astimezone(UTC)


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Sao_Paulo", "Asia/Kathmandu"])
def test_quiet_hours_defer_minor_incidents_but_not_severe_ones(client, operator, db, zone):
    window, quiet_end = _quiet_window_around_now(zone)
    sleeping = new_member(client, operator, timezone=zone, quiet_hours=window, webhook=True)
    awake = new_member(client, operator, timezone=zone)  # no quiet hours
    # Quiet hours that are not now: 12 hours away from the current local time.
    zone_info = ZoneInfo(zone)
    later = datetime.now(UTC).astimezone(zone_info) + timedelta(hours=12)
    day = new_member(
        client,
        operator,
        timezone=zone,
        quiet_hours={
            "start": later.strftime("%H:%M"),
            "end": (later + timedelta(hours=1)).strftime("%H:%M"),
        },
    )

    for severity in ("minor", "moderate"):
        incident = declared(client, operator, severity=severity)
        when = {(str(r[0]), r[1]): r[5] for r in ledger_rows(db, incident["id"])}
        assert when == {
            (sleeping["id"], "email"): quiet_end,
            (sleeping["id"], "webhook"): quiet_end,
            (awake["id"], "email"): None,
            (day["id"], "email"): None,
        }, severity
        listed = client.get(f"/v1/incidents/{incident['id']}/deliveries", headers=operator).json()[
            "items"
        ]
        deferred = [i for i in listed if i["member"]["id"] == sleeping["id"]]
        assert {datetime.fromisoformat(i["next_attempt_at"]) for i in deferred} == {quiet_end}

    for severity in ("severe", "extreme"):
        incident = declared(client, operator, severity=severity)
        assert {r[5] for r in ledger_rows(db, incident["id"])} == {None}, severity
