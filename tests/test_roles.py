"""Role checks on every route × every role, and on every way of not being authenticated.

`EXPECTED` is the specification: a route added without an entry (or whose `require(role)`
dependency disagrees with its entry) fails `test_every_route_has_an_entry`. Adding the entry
is enough to run every other test on the new route; give it a valid body in `_json_body`
(and real ids in `ids`) so that its success is checked on a real row.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import create_key, revoke_key
from app.db import session_scope
from app.models import Role
from app.principal import Principal
from app.security import new_api_key
from tests.support.factories import PUBLIC_WEBHOOK, assert_problem, member_payload

Route = tuple[str, str]

# (method, path template) → the least privileged role that may call it.
EXPECTED: dict[Route, Role] = {
    ("POST", "/v1/members"): Role.OPERATOR,
    ("GET", "/v1/members"): Role.OPERATOR,
    ("GET", "/v1/members/export"): Role.OPERATOR,
    ("POST", "/v1/members/import"): Role.OPERATOR,
    ("GET", "/v1/members/{member_id}"): Role.OPERATOR,
    ("PATCH", "/v1/members/{member_id}"): Role.OPERATOR,
    ("DELETE", "/v1/members/{member_id}"): Role.OPERATOR,
    ("POST", "/v1/members/{member_id}/webhook-secret"): Role.OPERATOR,
    ("POST", "/v1/rosters"): Role.OPERATOR,
    ("GET", "/v1/rosters"): Role.OPERATOR,
    ("GET", "/v1/rosters/{roster_id}"): Role.OPERATOR,
    ("PATCH", "/v1/rosters/{roster_id}"): Role.OPERATOR,
    ("DELETE", "/v1/rosters/{roster_id}"): Role.OPERATOR,
    ("GET", "/v1/rosters/{roster_id}/members"): Role.OPERATOR,
    ("POST", "/v1/rosters/{roster_id}/members"): Role.OPERATOR,
    ("POST", "/v1/rosters/{roster_id}/members/remove"): Role.OPERATOR,
    ("DELETE", "/v1/rosters/{roster_id}/members/{member_id}"): Role.OPERATOR,
    ("POST", "/v1/templates"): Role.OPERATOR,
    ("GET", "/v1/templates"): Role.OPERATOR,
    ("GET", "/v1/templates/{template_id}"): Role.OPERATOR,
    ("PATCH", "/v1/templates/{template_id}"): Role.OPERATOR,
    ("DELETE", "/v1/templates/{template_id}"): Role.OPERATOR,
    ("POST", "/v1/incidents"): Role.OPERATOR,
    ("POST", "/v1/incidents/preview"): Role.OPERATOR,
    ("GET", "/v1/incidents"): Role.VIEWER,
    ("GET", "/v1/incidents/{incident_id}"): Role.VIEWER,
    ("GET", "/v1/incidents/{incident_id}/status"): Role.VIEWER,
    ("GET", "/v1/incidents/{incident_id}/coverage"): Role.VIEWER,
    ("GET", "/v1/incidents/{incident_id}/events"): Role.VIEWER,
    ("GET", "/v1/incidents/{incident_id}/timeline"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/briefings"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/cap"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/updates"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/updates/preview"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/approve"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/reject"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/resolve"): Role.OPERATOR,
    ("POST", "/v1/incidents/{incident_id}/cancel"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/deliveries"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/acks"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/members/{member_id}/acks"): Role.OPERATOR,
    ("GET", "/v1/incidents/{incident_id}/quotas"): Role.VIEWER,
    ("GET", "/v1/audit"): Role.ADMIN,
}

# /v1 routes whose credential is an acknowledgement token in the body, not an API key.
TOKEN_AUTHENTICATED: set[Route] = {("POST", "/v1/acks")}

# Routes outside /v1 that answer without a key: the probes, the metrics, and the ack page (its URL
# holds a signed token; tests/acks checks that everything else about it is refused).
PUBLIC: set[Route] = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
ACK_PAGE: set[Route] = {("GET", "/ack/{token}"), ("HEAD", "/ack/{token}"), ("POST", "/ack/{token}")}
# The status board: a shell and its own script and stylesheet, the same for every incident and
# holding no data (its script reads the figures from /v1 with the viewer key; tests/board).
BOARD_PAGE: set[Route] = {
    ("GET", "/board/incidents/{incident_id}"),
    ("GET", "/board/static/board.js"),
    ("GET", "/board/static/board.css"),
}
# The console: its pages check a person's session, not a key (tests/console).
CONSOLE_PAGE: set[Route] = {
    ("GET", "/console"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/sign-out"),
    ("GET", "/console/setup/{token}"),
    ("POST", "/console/setup/{token}"),
    ("GET", "/console/static/{name}"),
    ("GET", "/console/approvals"),
    ("POST", "/console/incidents/{incident_id}/approve"),
    ("POST", "/console/incidents/{incident_id}/reject"),
}

ROUTES = sorted(EXPECTED)
ROUTE_IDS = [f"{method} {path}" for method, path in ROUTES]
ALL_ROLES = sorted(Role, key=lambda role: role.rank)

IMPORT_CSV = (
    "network,name,country,email,consent_given_at,consent_method\n"
    "editors,Imported Editor,TN,imported.editor@example.org,2026-01-15T10:00:00+00:00,written\n"
)

BAD_AUTHORIZATION = [
    pytest.param("Basic dXNlcjpwYXNz", id="basic"),
    pytest.param("Bearer ", id="bearer-empty"),
    pytest.param("Bearer", id="bearer-no-credentials"),
    pytest.param("Token abc", id="other-scheme"),
    pytest.param("rrmm_not-even-a-scheme", id="no-scheme"),
]


def app_routes(app: FastAPI, prefix: str = "/v1") -> dict[Route, Dependant]:
    """(method, path) → the dependency tree of every APIRoute under `prefix`.

    Included routers are flattened the way FastAPI itself does for the OpenAPI document.
    """
    routes: dict[Route, Dependant] = {}
    for context in iter_route_contexts(app.routes):
        path = context.path
        if isinstance(context.original_route, APIRoute) and path and path.startswith(prefix):
            for method in context.methods or ():
                routes[(method, path)] = context.dependant
    return routes


def required_roles(dependant: Dependant) -> set[Role]:
    """Every role that a `require(role)` dependency anywhere in the tree asks for."""
    roles: set[Role] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        role = getattr(current.call, "required_role", None)
        if role is not None:
            roles.add(role)
        stack.extend(current.dependencies)
    return roles


def test_every_route_has_an_entry(app):
    actual = app_routes(app)
    for key in TOKEN_AUTHENTICATED:
        assert required_roles(actual.pop(key)) == set(), key
    assert set(actual) == set(EXPECTED), (
        f"routes without an entry: {sorted(set(actual) - set(EXPECTED))}; "
        f"entries without a route: {sorted(set(EXPECTED) - set(actual))}"
    )
    for key, dependant in actual.items():
        assert required_roles(dependant) == {EXPECTED[key]}, key


def test_only_the_probes_and_the_pages_are_public(app):
    outside = {
        key: dependant
        for key, dependant in app_routes(app, prefix="/").items()
        if not key[1].startswith("/v1/")
    }
    assert set(outside) == PUBLIC | ACK_PAGE | BOARD_PAGE | CONSOLE_PAGE
    for key, dependant in outside.items():
        assert required_roles(dependant) == set(), key


@pytest.mark.parametrize("route", sorted(PUBLIC), ids=[f"{m} {p}" for m, p in sorted(PUBLIC)])
def test_probes_need_no_key(client, route):
    method, path = route
    response = client.request(method, path)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------
# Requests: real ids and bodies that pass validation, so only authorization can refuse them.


@pytest.fixture
def ids(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """A member (with a webhook, so its secret can be rotated) in a roster."""
    member = client.post(
        "/v1/members", json=member_payload(webhook_url=PUBLIC_WEBHOOK), headers=admin
    )
    assert member.status_code == 201, member.text
    roster = client.post("/v1/rosters", json={"name": "Editors — Maghreb"}, headers=admin)
    assert roster.status_code == 201, roster.text
    member_id, roster_id = member.json()["id"], roster.json()["id"]
    added = client.post(
        f"/v1/rosters/{roster_id}/members", json={"member_ids": [member_id]}, headers=admin
    )
    assert added.status_code == 200, added.text
    incident = client.post("/v1/incidents", json=_incident_body(member_id), headers=admin)
    assert incident.status_code == 202, incident.text
    template = client.post("/v1/templates", json=TEMPLATE, headers=admin)
    assert template.status_code == 201, template.text
    return {
        "member_id": member_id,
        "roster_id": roster_id,
        "incident_id": incident.json()["id"],
        "template_id": template.json()["id"],
    }


TEMPLATE = {
    "name": "Call for calm",
    "variables": [{"name": "city"}],
    "content": {"en": {"subject": "Calm in {{ city }}", "body": "Please call for calm."}},
}


def _incident_body(member_id: str) -> dict[str, Any]:
    return {
        "title": "Tension in the capital",
        "severity": "severe",
        "urgency": "immediate",
        "audience": {"member_ids": [member_id]},
        "briefing": {"en": {"subject": "Call for calm", "body": "Please call for calm."}},
    }


def request_kwargs(method: str, path: str, ids: dict[str, str]) -> dict[str, Any]:
    """URL, body and content type of a valid call of this route."""
    # Ids of rows that no fixture creates are random: authorization is checked first anyway.
    parameters = collections.defaultdict(lambda: str(uuid.uuid4()), ids)
    if path.endswith("/events"):
        # The stream of a real incident never ends; an unknown one is a 404 once the key
        # and its role have been checked, which is what this call is about.
        parameters["incident_id"] = str(uuid.uuid4())
    kwargs: dict[str, Any] = {"url": path.format_map(parameters), "headers": {}}
    if (method, path) == ("POST", "/v1/members/import"):
        kwargs["content"] = IMPORT_CSV
        kwargs["headers"]["Content-Type"] = "text/csv"
    elif method in ("POST", "PATCH"):
        kwargs["json"] = _json_body(method, path, ids)
    return kwargs


def _json_body(method: str, path: str, ids: dict[str, str]) -> dict[str, Any]:
    bodies: dict[Route, dict[str, Any]] = {
        ("POST", "/v1/members"): member_payload(),
        ("PATCH", "/v1/members/{member_id}"): {"title": "Publisher"},
        ("POST", "/v1/members/{member_id}/webhook-secret"): {},
        ("POST", "/v1/rosters"): {"name": "Personalities — Sahel"},
        ("POST", "/v1/templates"): {**TEMPLATE, "name": "Another call for calm"},
        ("PATCH", "/v1/templates/{template_id}"): {"description": "For riots after a publication"},
        ("PATCH", "/v1/rosters/{roster_id}"): {"description": "Newsrooms of the Maghreb"},
        ("POST", "/v1/rosters/{roster_id}/members"): {"member_ids": [ids["member_id"]]},
        ("POST", "/v1/rosters/{roster_id}/members/remove"): {"member_ids": [ids["member_id"]]},
        ("POST", "/v1/incidents"): _incident_body(ids["member_id"]),
        ("POST", "/v1/incidents/preview"): _incident_body(ids["member_id"]),
        ("POST", "/v1/incidents/{incident_id}/updates"): {
            "briefing": {"en": {"subject": "Update", "body": "Calm is returning."}}
        },
        ("POST", "/v1/incidents/{incident_id}/reject"): {"reason": "Wrong country."},
        ("POST", "/v1/incidents/{incident_id}/updates/preview"): {
            "briefing": {"en": {"subject": "Update", "body": "Calm is returning."}}
        },
    }
    return bodies.get((method, path), {})


def call(
    client: TestClient,
    route: Route,
    ids: dict[str, str],
    authorization: str | None,
) -> Any:
    method, path = route
    kwargs = request_kwargs(method, path, ids)
    if authorization is not None:
        kwargs["headers"]["Authorization"] = authorization
    return client.request(method, **kwargs)


def assert_unauthenticated(response: Any) -> None:
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers


# ---------------------------------------------------------------------------------------------
# Every route × every way of not being authenticated.


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_no_key_is_401(client, ids, route):
    assert_unauthenticated(call(client, route, ids, None))


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_malformed_header_is_401(client, ids, route, authorization):
    assert_unauthenticated(call(client, route, ids, authorization))


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_unknown_key_is_401(client, ids, route, api_keys):
    unknown = new_api_key()  # well-formed, never stored
    assert unknown not in api_keys.values()
    assert_unauthenticated(call(client, route, ids, f"Bearer {unknown}"))


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_revoked_key_is_401(
    client: TestClient,
    ids: dict[str, str],
    route: Route,
    session_factory: sessionmaker[Session],
) -> None:
    with session_scope(session_factory) as session:
        key, plaintext = create_key(
            session, name="to-revoke", role=Role.ADMIN, actor=Principal.cli()
        )
        key_id: uuid.UUID = key.id
    # The key works (for everything: it is an admin key) until it is revoked.
    before = client.get("/v1/audit", headers={"Authorization": f"Bearer {plaintext}"})
    assert before.status_code == 200, before.text
    with session_scope(session_factory) as session:
        revoke_key(session, key_id=key_id, actor=Principal.cli())
    assert_unauthenticated(call(client, route, ids, f"Bearer {plaintext}"))


# ---------------------------------------------------------------------------------------------
# Every route × every role: below the minimum is 403, the minimum and above get through.


ROLE_CASES = [
    pytest.param(route, role, id=f"{route_id} as {role.value}")
    for route, route_id in zip(ROUTES, ROUTE_IDS, strict=True)
    for role in ALL_ROLES
]


@pytest.mark.parametrize(("route", "role"), ROLE_CASES)
def test_role(
    client: TestClient,
    ids: dict[str, str],
    auth: Callable[[Role], dict[str, str]],
    route: Route,
    role: Role,
) -> None:
    response = call(client, route, ids, auth(role)["Authorization"])
    if role.includes(EXPECTED[route]):
        assert response.status_code not in (401, 403), response.text
    else:
        body = assert_problem(response, 403)
        assert EXPECTED[route].value in body["detail"]
