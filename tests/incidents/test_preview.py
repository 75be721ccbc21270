"""Preview (dry run) of a declaration and an update: counts, messages, and no writes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Role
from app.models.base import Base, utcnow
from tests.incidents.test_incidents_api import declared, new_member
from tests.support.factories import assert_problem, briefing, declare_body


def row_counts(db: Session) -> dict[str, int]:
    """Rows in every table of the schema."""
    db.rollback()
    return {
        table.name: db.scalar(select(func.count()).select_from(table)) or 0
        for table in Base.metadata.sorted_tables
    }


def quiet_now() -> dict[str, str]:
    """Quiet hours (UTC) around the present moment."""
    now = utcnow()
    return {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
    }


def test_preview_counts_the_audience_and_writes_nothing(client, operator, db):
    new_member(client, operator, network="editors", country="MA", languages=["ar"])
    new_member(client, operator, network="editors", country="FR", languages=["fr-CA"])
    new_member(
        client, operator, network="personalities", country="MA", languages=["de"], webhook=True
    )
    new_member(
        client,
        operator,
        network="personalities",
        country="TN",
        languages=["en"],
        timezone="UTC",
        quiet_hours=quiet_now(),
    )
    # Reached by no channel of the declaration below.
    new_member(
        client,
        operator,
        network="editors",
        country="TN",
        languages=["en"],
        webhook=True,
        by_email=False,
    )
    body = declare_body(severity="moderate", channels=["email"], briefing=briefing(en="", ar=""))
    before = row_counts(db)

    response = client.post("/v1/incidents/preview", json=body, headers=operator)

    assert response.status_code == 200, response.text
    assert row_counts(db) == before
    preview = response.json()
    assert preview["members"] == 4
    assert preview["by_network"] == {"editors": 2, "personalities": 2}
    assert preview["by_country"] == {"MA": 2, "FR": 1, "TN": 1}
    assert preview["by_language"] == {"ar": 1, "en": 3}
    assert preview["by_channel"] == {"email": 4}
    assert preview["language_fallback"] == {"members": 2, "by_language": {"en": 2}}
    assert preview["quiet_hours"]["members"] == 1
    assert preview["quiet_hours"]["until"] is not None
    assert preview["unreachable"] == 1
    by_language = {m["language"]: m for m in preview["messages"]}
    assert set(by_language) == {"ar", "en"}
    arabic = by_language["ar"]
    assert arabic["direction"] == "rtl"
    assert arabic["members"] == 1
    assert "Subject in ar" in arabic["email"]["subject"]
    assert preview["ack_url_placeholder"] in arabic["email"]["text"]
    assert preview["ack_url_placeholder"] in arabic["email"]["html"]
    assert 'dir="rtl"' in arabic["email"]["html"]
    hook = json.loads(arabic["webhook"]["body"])
    assert hook["type"] == "incident.declared"
    assert hook["data"]["briefing"]["language"] == "ar"
    assert hook["data"]["ack"]["page"] == preview["ack_url_placeholder"]
    assert arabic["webhook"]["size"] == len(arabic["webhook"]["body"].encode())
    assert arabic["email"]["size"] > len(arabic["email"]["html"].encode())

    # The declaration then does what the preview said (same counts, same languages).
    incident = declared(client, operator, **body)
    assert incident["targeted"] == preview["members"]
    assert row_counts(db)["deliveries"] == preview["by_channel"]["email"]
    # Severe briefings never wait for quiet hours.
    severe = client.post(
        "/v1/incidents/preview", json={**body, "severity": "severe"}, headers=operator
    ).json()
    assert severe["quiet_hours"] == {"members": 0, "until": None}


def test_preview_of_an_update_counts_the_targeted_and_newcomers(client, operator, db):
    new_member(client, operator, network="editors", languages=["fr"])
    incident = declared(client, operator, audience={"networks": ["editors"]})
    new_member(client, operator, network="editors", languages=["en"])
    update = {"briefing": briefing(en="", fr="")}
    before = row_counts(db)

    response = client.post(
        f"/v1/incidents/{incident['id']}/updates/preview", json=update, headers=operator
    )

    assert response.status_code == 200, response.text
    assert row_counts(db) == before
    preview = response.json()
    assert preview["members"] == 2
    assert preview["by_language"] == {"en": 1, "fr": 1}
    assert preview["language_fallback"]["members"] == 0
    subjects = {m["language"]: m["email"]["subject"] for m in preview["messages"]}
    assert subjects["fr"].endswith("Subject in fr")
    assert "Mise à jour 2" in subjects["fr"]
    hook = json.loads(preview["messages"][0]["webhook"]["body"])
    assert hook["type"] == "incident.updated"
    assert hook["data"]["incident"]["id"] == incident["id"]


@pytest.mark.usefixtures("db")
def test_preview_refuses_bad_input_and_ended_incidents(client, operator, auth):
    new_member(client, operator)
    unknown = declare_body(audience={"rosters": ["00000000-0000-0000-0000-000000000001"]})
    response = client.post("/v1/incidents/preview", json=unknown, headers=operator)
    assert_problem(response, 422, "body.audience.rosters")
    response = client.post(
        "/v1/incidents/preview", json=declare_body(severity="huge"), headers=operator
    )
    assert_problem(response, 422, "body.severity")
    viewer = client.post("/v1/incidents/preview", json=declare_body(), headers=auth(Role.VIEWER))
    assert_problem(viewer, 403)

    incident = declared(client, operator)
    client.post(f"/v1/incidents/{incident['id']}/cancel", headers=operator)
    ended = client.post(
        f"/v1/incidents/{incident['id']}/updates/preview",
        json={"briefing": briefing()},
        headers=operator,
    )
    assert_problem(ended, 409)
