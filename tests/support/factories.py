"""Plain functions that make test data: request bodies, an app's client, the wait for a
fan-out to settle. Test modules and conftest files import from here, never from each other."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.netutil import wait_until
from app.vocabulary import OPEN_DELIVERY_STATUSES

TEST_SECRET_KEY = secrets.token_hex(32)


# A public address literal: no DNS is needed (these machines resolve nothing outside).
PUBLIC_WEBHOOK = "https://93.184.215.14/hooks/rrmm"


def make_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def member_payload(**overrides: Any) -> dict[str, Any]:
    """A valid member body; override any field (None removes it)."""
    payload: dict[str, Any] = {
        "network": "editors",
        "name": "Leila Benali",
        "organization": "Le Quotidien",
        "title": "Editor-in-chief",
        "country": "MA",
        "languages": ["fr", "ar", "en"],
        "themes": ["religious-hatred", "intercultural-dialogue"],
        "tags": ["maghreb", "print"],
        "email": f"leila.{uuid.uuid4().hex[:8]}@example.org",
        "timezone": "Africa/Casablanca",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "status": "active",
        "consent": {"given_at": "2026-01-15T10:00:00+00:00", "method": "written"},
    }
    for key, value in overrides.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The response is problem+json with this status (and names this field, if given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert any(field in f for f in fields), (field, body)
    return body


def briefing(**languages: str) -> dict[str, Any]:
    return {
        language: {
            "subject": f"Subject in {language}",
            "body": f"Body in {language}.\n\nSecond paragraph.",
            "talking_points": [f"Point one ({language})", "Point two"],
        }
        for language in (languages or {"en": ""})
    }


def declare_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Tension after the cartoon publication",
        "severity": "severe",
        "urgency": "immediate",
        "mode": "actual",
        "countries": ["MA"],
        "themes": ["religious-hatred"],
        "audience": {"networks": ["editors", "personalities"]},
        "briefing": briefing(en="", fr="", ar=""),
    }
    body.update(overrides)
    return body


def wait_final(
    client: TestClient, headers: dict[str, str], incident_id: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll the status until no delivery is pending, sending or retrying."""
    state: dict[str, Any] = {}

    def done() -> bool:
        nonlocal state
        state = client.get(f"/v1/incidents/{incident_id}/status", headers=headers).json()
        by_status = state["deliveries"]["by_status"]
        return sum(by_status.values()) > 0 and not any(
            by_status.get(s, 0) for s in OPEN_DELIVERY_STATUSES
        )

    wait_until(done, timeout, f"every delivery final (last status {state})", interval=0.3)
    return state
