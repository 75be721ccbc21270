"""Briefing templates: written and versioned through the API, checked when written, rendered
sandboxed into a declaration's or an update's briefing, in every language they have."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import BriefingTemplate, BriefingTemplateVersion, Incident, Role
from tests.support.factories import assert_problem, declare_body, member_payload

CALM: dict[str, Any] = {
    "name": "Call for calm after a publication",
    "description": "A cartoon or an article has offended; protests are announced.",
    "variables": [
        {"name": "city", "description": "Where the protests are announced"},
        {"name": "publication", "description": "The title that published it"},
        {"name": "note", "required": False},
    ],
    "content": {
        "en": {
            "subject": "Protests announced in {{ city }}",
            "body": "{{ publication }} published a cartoon; protests are announced in "
            "{{ city }}.{% if note %}\n\n{{ note }}{% endif %}",
            "talking_points": [
                "Condemn violence in {{ city }}",
                "{% if note %}{{ note }}{% endif %}",
            ],
        },
        "fr": {
            "subject": "Manifestations annoncées à {{ city }}",
            "body": "{{ publication }} a publié une caricature ; des manifestations sont "
            "annoncées à {{ city }}.",
        },
        "ar": {
            "subject": "مظاهرات معلنة في {{ city }}",
            "body": "نشرت {{ publication }} رسماً كاريكاتيرياً؛ ومظاهرات معلنة في {{ city }}.",
        },
    },
}
VALUES = {"city": "Casablanca", "publication": "Le Quotidien"}


def counts(session_factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(BriefingTemplate)) or 0,
            session.scalar(select(func.count()).select_from(BriefingTemplateVersion)) or 0,
            session.scalar(select(func.count()).select_from(Incident)) or 0,
        )


@pytest.fixture
def template(client: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/templates", json=CALM, headers=operator)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/templates/{response.json()['id']}"
    return dict(response.json())


@pytest.fixture
def member(client: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/members", json=member_payload(), headers=operator)
    assert response.status_code == 201, response.text
    return dict(response.json())


def from_template(member_id: str, use: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = declare_body(audience={"member_ids": [member_id]}, template=use, **overrides)
    del body["briefing"]
    return body


# ------------------------------------------------------------------------------ the CRUD


def test_every_change_is_a_new_version_and_the_old_ones_stay_readable(
    client: TestClient, operator: dict[str, str], template: dict[str, Any]
) -> None:
    assert template["version"] == template["latest_version"] == 1
    assert template["languages"] == ["en", "fr", "ar"]
    assert [v["name"] for v in template["variables"]] == ["city", "publication", "note"]
    assert [v["required"] for v in template["variables"]] == [True, True, False]
    url = f"/v1/templates/{template['id']}"

    wording = {"en": {"subject": "Calm in {{ city }}", "body": "Please, calm in {{ city }}."}}
    changed = client.patch(url, json={"content": wording}, headers=operator)
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    assert changed.json()["languages"] == ["en"]
    described = client.patch(url, json={"description": None}, headers=operator)
    assert described.json()["version"] == 3
    assert described.json()["description"] is None

    first = client.get(url, params={"version": 1}, headers=operator).json()
    assert first["version"] == 1
    assert first["latest_version"] == 3
    assert first["content"]["fr"]["subject"] == CALM["content"]["fr"]["subject"]
    assert client.get(url, headers=operator).json()["content"]["en"]["subject"] == (
        "Calm in {{ city }}"
    )
    assert_problem(client.get(url, params={"version": 4}, headers=operator), 422, "query.version")

    listed = client.get("/v1/templates", headers=operator).json()
    assert [(t["id"], t["version"]) for t in listed["items"]] == [(template["id"], 3)]
    assert "content" not in listed["items"][0]  # a list carries no wording

    assert client.delete(url, headers=operator).status_code == 204
    assert_problem(client.get(url, headers=operator), 404)


@pytest.mark.usefixtures("template")
def test_names_are_unique(client: TestClient, operator: dict[str, str]) -> None:
    assert_problem(client.post("/v1/templates", json=CALM, headers=operator), 409, "body.name")
    other = client.post("/v1/templates", json={**CALM, "name": "Other"}, headers=operator)
    assert other.status_code == 201, other.text
    renamed = client.patch(
        f"/v1/templates/{other.json()['id']}", json={"name": CALM["name"]}, headers=operator
    )
    assert_problem(renamed, 409, "body.name")


def test_a_viewer_reads_no_template(
    client: TestClient, auth: Any, template: dict[str, Any]
) -> None:
    viewer = auth(Role.VIEWER)
    assert_problem(client.get("/v1/templates", headers=viewer), 403)
    assert_problem(client.get(f"/v1/templates/{template['id']}", headers=viewer), 403)


# ----------------------------------------------------------------- refused when written


def _with(part: str, source: Any) -> dict[str, Any]:
    """CALM with one part of its English entry replaced."""
    return {**CALM, "content": {"en": {**CALM["content"]["en"], part: source}}}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (_with("body", "Protests in {{ city "), "body.content.en.body", "line 1"),
        (_with("subject", "{% if city %}no end"), "body.content.en.subject", "line 1"),
        (_with("body", "Hello {{ mayor }}"), "body.content.en.body", "'mayor'"),
        (_with("body", "{{ ''.__class__.__mro__ }}"), "body.content.en.body", "render"),
        (_with("body", "{{ city.__class__ }}"), "body.content.en.body", "render"),
        (_with("body", "{% include 'secrets.txt' %}"), "body.content.en.body", "include"),
        (_with("body", "{% extends 'base' %}"), "body.content.en.body", "extends"),
        (_with("body", "{% import 'x' as y %}{{ city }}"), "body.content.en.body", "import"),
        (
            _with("talking_points", ["Fine", "{{ nope }}"]),
            "body.content.en.talking_points.1",
            "'nope'",
        ),
        ({**CALM, "variables": [{"name": "city"}, {"name": "city"}]}, "body", "once"),
        ({**CALM, "variables": [{"name": "City"}]}, "body.variables.0.name", None),
        ({**CALM, "content": {}}, "body.content", None),
    ],
)
def test_a_template_that_would_not_render_is_refused_and_nothing_is_written(
    client: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    body: dict[str, Any],
    field: str,
    reason: str | None,
) -> None:
    problem = assert_problem(client.post("/v1/templates", json=body, headers=operator), 422, field)
    if reason is not None:
        assert any(reason in e["reason"] for e in problem["errors"]), problem
    assert counts(session_factory) == (0, 0, 0)


def test_a_change_that_would_not_render_is_refused_and_the_version_stays(
    client: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    template: dict[str, Any],
) -> None:
    url = f"/v1/templates/{template['id']}"
    # Dropping a variable the wording still uses.
    dropped = client.patch(url, json={"variables": [{"name": "city"}]}, headers=operator)
    assert_problem(dropped, 422, "body.content.en.body")
    assert_problem(client.patch(url, json={}, headers=operator), 422)
    assert_problem(client.patch(url, json={"name": None}, headers=operator), 422)
    assert client.get(url, headers=operator).json()["version"] == 1
    assert counts(session_factory) == (1, 1, 0)


# -------------------------------------------------------------- declaring from a template


def test_a_declaration_from_a_template_is_written_in_every_language(
    client: TestClient,
    operator: dict[str, str],
    template: dict[str, Any],
    member: dict[str, Any],
) -> None:
    use = {"id": template["id"], "variables": VALUES}
    declared = client.post("/v1/incidents", json=from_template(member["id"], use), headers=operator)
    assert declared.status_code == 202, declared.text
    incident = declared.json()
    assert incident["template"] == {"id": template["id"], "version": 1}

    [version] = client.get(f"/v1/incidents/{incident['id']}/briefings", headers=operator).json()
    assert version["template"] == {"id": template["id"], "version": 1}
    assert version["languages"] == ["en", "fr", "ar"]
    content = version["content"]
    assert content["en"]["subject"] == "Protests announced in Casablanca"
    assert content["en"]["body"] == (
        "Le Quotidien published a cartoon; protests are announced in Casablanca."
    )
    # The optional `note` left out: its talking point renders empty and is dropped.
    assert content["en"]["talking_points"] == ["Condemn violence in Casablanca"]
    assert content["fr"]["subject"] == "Manifestations annoncées à Casablanca"
    assert content["ar"]["subject"] == "مظاهرات معلنة في Casablanca"


def test_an_update_from_a_pinned_version_records_it(
    client: TestClient,
    operator: dict[str, str],
    template: dict[str, Any],
    member: dict[str, Any],
) -> None:
    declared = client.post(
        "/v1/incidents",
        json=declare_body(audience={"member_ids": [member["id"]]}),
        headers=operator,
    )
    assert declared.status_code == 202, declared.text
    assert declared.json()["template"] is None
    incident_id = declared.json()["id"]
    url = f"/v1/templates/{template['id']}"
    wording = {"en": {"subject": "Calm returns to {{ city }}", "body": "Thank you, {{ city }}."}}
    client.patch(url, json={"content": wording, "variables": [{"name": "city"}]}, headers=operator)

    pinned = {"id": template["id"], "version": 1, "variables": {**VALUES, "note": "Stay calm."}}
    update = client.post(
        f"/v1/incidents/{incident_id}/updates", json={"template": pinned}, headers=operator
    )
    assert update.status_code == 202, update.text
    latest = {"id": template["id"], "variables": {"city": "Rabat"}}
    again = client.post(
        f"/v1/incidents/{incident_id}/updates", json={"template": latest}, headers=operator
    )
    assert again.status_code == 202, again.text

    versions = client.get(f"/v1/incidents/{incident_id}/briefings", headers=operator).json()
    assert [v["template"] for v in versions] == [
        None,
        {"id": template["id"], "version": 1},
        {"id": template["id"], "version": 2},
    ]
    assert versions[1]["content"]["en"]["body"].endswith("Casablanca.\n\nStay calm.")
    assert versions[1]["content"]["en"]["talking_points"] == [
        "Condemn violence in Casablanca",
        "Stay calm.",
    ]
    assert versions[2]["content"]["en"]["subject"] == "Calm returns to Rabat"


@pytest.mark.parametrize(
    ("use", "field"),
    [
        ({"variables": {"city": "Casablanca"}}, "body.template.variables.publication"),
        ({"variables": {**VALUES, "city": "  "}}, "body.template.variables.city"),
        ({"variables": {**VALUES, "mayor": "X"}}, "body.template.variables.mayor"),
        ({"variables": {**VALUES, "city": 42}}, "body.template.variables.city"),
        ({"variables": {**VALUES, "city": ["Rabat"]}}, "body.template.variables.city"),
        ({"variables": VALUES, "version": 2}, "body.template.version"),
        ({"variables": VALUES, "id": "0190a1b2-0000-7000-8000-000000000000"}, "body.template.id"),
        ({"variables": {**VALUES, "city": "x" * 300}}, "body.template.variables"),
    ],
)
def test_a_wrong_use_of_a_template_is_a_422_naming_it_and_nothing_is_written(
    client: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    template: dict[str, Any],
    member: dict[str, Any],
    use: dict[str, Any],
    field: str,
) -> None:
    body = from_template(member["id"], {"id": template["id"], **use})
    assert_problem(client.post("/v1/incidents", json=body, headers=operator), 422, field)
    assert_problem(client.post("/v1/incidents/preview", json=body, headers=operator), 422, field)
    assert counts(session_factory) == (1, 1, 0)


def test_a_briefing_and_a_template_together_or_neither_are_refused(
    client: TestClient, operator: dict[str, str], template: dict[str, Any], member: dict[str, Any]
) -> None:
    both = declare_body(
        audience={"member_ids": [member["id"]]},
        template={"id": template["id"], "variables": VALUES},
    )
    assert_problem(client.post("/v1/incidents", json=both, headers=operator), 422, "body.briefing")
    neither = declare_body(audience={"member_ids": [member["id"]]})
    del neither["briefing"]
    assert_problem(
        client.post("/v1/incidents", json=neither, headers=operator), 422, "body.briefing"
    )


def test_a_template_without_english_needs_require_english_false(
    client: TestClient, operator: dict[str, str], member: dict[str, Any]
) -> None:
    french = {**CALM, "name": "En français", "content": {"fr": CALM["content"]["fr"]}}
    created = client.post("/v1/templates", json=french, headers=operator)
    assert created.status_code == 201, created.text
    use = {"id": created.json()["id"], "variables": VALUES}
    refused = client.post("/v1/incidents", json=from_template(member["id"], use), headers=operator)
    assert_problem(refused, 422, "body.template")
    body = from_template(member["id"], use, require_english=False)
    assert client.post("/v1/incidents", json=body, headers=operator).status_code == 202


def test_the_preview_shows_the_rendered_template_with_values_escaped_in_html(
    client: TestClient, operator: dict[str, str], template: dict[str, Any], member: dict[str, Any]
) -> None:
    hostile = {"city": "<script>alert(1)</script> & Fès", "publication": "Le Quotidien"}
    body = from_template(member["id"], {"id": template["id"], "variables": hostile})
    preview = client.post("/v1/incidents/preview", json=body, headers=operator)
    assert preview.status_code == 200, preview.text
    [message] = preview.json()["messages"]  # the member reads French first
    assert message["language"] == "fr"
    email = message["email"]
    assert "Manifestations annoncées à <script>alert(1)</script> & Fès" in email["subject"]
    assert "<script>alert(1)</script> & Fès" in email["text"]  # plain text: as written
    assert "<script>" not in email["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Fès" in email["html"]
