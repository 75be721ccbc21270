"""Schemathesis over the whole OpenAPI document: no 5xx, and no response that breaks its schema.

Every operation is its own test, called as an admin (who may call everything). A member
(with a webhook) in a roster is seeded first; about half of the generated cases are then
pointed at those rows (path ids, `member_ids`) and given the few values that the document
cannot describe (a real country, language and time zone; a public webhook; a valid CSV), so
reads and writes reach real rows and succeed, not only answer 404 or 422.
"""

from __future__ import annotations

import secrets
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from app.config import Settings
from app.main import create_app
from app.pagination import encode_cursor
from tests.support.factories import PUBLIC_WEBHOOK, member_payload

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

# Valid values that a JSON schema cannot express (ISO 3166 codes, BCP 47 tags, IANA zones).
MEMBER_FIELDS: dict[str, Any] = {
    "country": "TN",
    "languages": ["ar", "fr"],
    "timezone": "Africa/Tunis",
    "webhook_url": PUBLIC_WEBHOOK,
}


def import_csv() -> str:
    """Two good rows (one with a webhook) and a bad one: a 422 with `on_error=abort`, a
    partial import with `on_error=skip`."""
    email = f"imported.{uuid.uuid4().hex[:8]}@example.org"
    consent = "2026-01-15T10:00:00+00:00,written"
    return (
        "network,name,country,languages,email,webhook_url,consent_given_at,consent_method\n"
        f"editors,Imported Editor,TN,ar;fr,{email},,{consent}\n"
        f"personalities,Hooked Personality,MA,fr,,{PUBLIC_WEBHOOK},{consent}\n"
        f"editors,Bad Country,XX,fr,bad.{email},,{consent}\n"
    )


class Seed:
    """Real rows for the generated cases to reach; re-created when a case deletes them.

    Written through a second application on the same database, so the application under
    test only ever sees Schemathesis's requests.
    """

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers
        self._member_id: str | None = None
        self._roster_id: str | None = None

    def _exists(self, path: str) -> bool:
        response = self.client.get(path, headers=self.headers)
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200

    def member_id(self) -> str:
        if self._member_id is None or not self._exists(f"/v1/members/{self._member_id}"):
            payload = member_payload(webhook_url=PUBLIC_WEBHOOK)
            response = self.client.post("/v1/members", json=payload, headers=self.headers)
            assert response.status_code == 201, response.text
            self._member_id = str(response.json()["id"])
        return self._member_id

    def roster_id(self) -> str:
        """The seeded roster, holding the seeded member."""
        if self._roster_id is None or not self._exists(f"/v1/rosters/{self._roster_id}"):
            name = f"Seeded roster {uuid.uuid4().hex[:8]}"
            response = self.client.post("/v1/rosters", json={"name": name}, headers=self.headers)
            assert response.status_code == 201, response.text
            self._roster_id = str(response.json()["id"])
        roster_id = self._roster_id
        added = self.client.post(
            f"/v1/rosters/{roster_id}/members",
            json={"member_ids": [self.member_id()]},
            headers=self.headers,
        )
        assert added.status_code == 200, added.text
        return roster_id

    def apply(self, case: Any) -> None:
        """Point the case at the seeded rows and give it the values no schema can describe."""
        path_parameters = case.path_parameters
        if path_parameters:
            if "roster_id" in path_parameters:
                path_parameters["roster_id"] = self.roster_id()
            if "member_id" in path_parameters:
                path_parameters["member_id"] = self.member_id()
        body = case.body
        if case.operation.path == "/v1/members/import":
            case.body = import_csv()
        elif isinstance(body, dict) and case.operation.path.startswith("/v1/members"):
            body.update({key: value for key, value in MEMBER_FIELDS.items() if key in body})
        elif isinstance(body, dict) and isinstance(body.get("member_ids"), list):
            body["member_ids"] = [self.member_id(), *body["member_ids"][1:]]


@pytest.fixture
def seed(settings: Settings, admin: dict[str, str]) -> Iterator[Seed]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        seed = Seed(client, admin)
        seed.roster_id()
        yield seed


def uses_seed(case: Any) -> bool:
    """About half the cases, chosen by their content, so that a failure replays the same.

    (`@schema.given(use_seed=st.booleans())` would be the natural way, but Schemathesis
    refuses `given` beside the examples that the document holds.)
    """
    return zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2 == 0


def _document() -> dict[str, Any]:
    """The OpenAPI document, from an application that is never started (no I/O)."""
    settings = Settings(
        mode="production",
        database_url="sqlite://",
        broker_url="memory://",
        secret_key=secrets.token_hex(32),
        log_format="json",
    )
    return create_app(settings).openapi()


# Loaded at import time, so that each operation is a test of its own with its own fixtures.
# (`schemathesis.pytest.from_fixture` would load it from a fixture instead, but it fails on
# pytest 9.2: it sets `Function._nodeid`, which pytest no longer has.)
DOCUMENT = _document()
# The admin key goes with every request (authorization has its own tests: test_roles.py), so
# Schemathesis must not generate, drop or mangle the `Authorization` header itself.
CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_document_is_the_served_one(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: Any, app: FastAPI, admin: dict[str, str], seed: Seed) -> None:
    if uses_seed(case):
        seed.apply(case)
    response = case.call(app=app, headers=dict(admin))  # a copy: call() adds to it
    assert response.status_code not in (401, 403), response.text  # the admin key always works
    case.validate_response(response, checks=CHECKS)


# Values that the generator rarely reaches, checked the same way (found by probing).
OVERFLOWING_CONSENT = {"given_at": "0001-01-01T00:00:00+01:00", "method": "written"}
EDGE_CASES = [
    pytest.param(
        "GET", "/v1/audit", {"query": {"cursor": encode_cursor(2**64)}}, id="cursor beyond int64"
    ),
    pytest.param("GET", "/v1/audit", {"query": {"cursor": encode_cursor(-1)}}, id="cursor < 0"),
    pytest.param(
        "POST",
        "/v1/members",
        {"body": member_payload(consent=OVERFLOWING_CONSENT)},
        id="consent before year 1 in UTC",
    ),
    pytest.param(
        "POST",
        "/v1/members/import",
        {
            "body": "network,name,country,email,consent_given_at,consent_method\n"
            "editors,Early Editor,MA,early@example.org,0001-01-01T00:00:00+01:00,written\n",
            "media_type": "text/csv",
        },
        id="imported consent before year 1 in UTC",
    ),
]


@pytest.mark.parametrize(("method", "path", "data"), EDGE_CASES)
def test_edge_values(app, admin, method, path, data):
    case = schema[path][method].Case(**data)
    response = case.call(app=app, headers=dict(admin))
    case.validate_response(response, checks=CHECKS)
