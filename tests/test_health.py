"""Liveness and readiness probes, against real and unreachable dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import session_scope
from app.health.schemas import Liveness, Readiness
from app.health.service import record_heartbeat, record_sweep
from app.models.base import utcnow
from tests.support.factories import make_client

# Port 1 on the loopback: nothing listens there, so connecting fails at once.
DEAD_DATABASE = "postgresql+psycopg://rrmm_user:db-pass-hunter2@127.0.0.1:1/rrmm_db"
DEAD_BROKER = "redis://:broker-pass-swordfish@127.0.0.1:1/0"


@contextmanager
def client_for(settings: Settings) -> Iterator[TestClient]:
    yield from make_client(settings)


def test_healthz_needs_no_key(client):
    response = client.get("/healthz")

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_healthz_does_no_io(settings):
    dead = settings.model_copy(update={"database_url": DEAD_DATABASE, "broker_url": DEAD_BROKER})
    with client_for(dead) as client:
        response = client.get("/healthz")

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_readyz_when_everything_answers(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "workers": "none"},
    }


@pytest.mark.usefixtures("engine")
def test_readyz_when_the_broker_is_unreachable(settings):
    with client_for(settings.model_copy(update={"broker_url": DEAD_BROKER})) as client:
        response = client.get("/readyz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")
    assert "swordfish" not in response.text
    assert "127.0.0.1" not in response.text


def test_readyz_when_the_database_is_unreachable(settings):
    with client_for(settings.model_copy(update={"database_url": DEAD_DATABASE})) as client:
        response = client.get("/readyz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("unreachable")
    assert body["checks"]["broker"] == "ok"
    for leaked in ("hunter2", "rrmm_user", "rrmm_db", "127.0.0.1", "postgresql"):
        assert leaked not in response.text


# --- the worker check: a heartbeat row written by the beat-driven `rrmm.heartbeat` task ------


def _beat(session_factory, age_seconds: float, name: str = "celery@worker-1") -> None:
    with session_scope(session_factory) as session:
        record_heartbeat(session, name, at=utcnow() - timedelta(seconds=age_seconds))


def test_readyz_reports_a_fresh_worker(client, session_factory, settings):
    _beat(session_factory, settings.heartbeat_interval_seconds)

    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["checks"]["workers"] == "ok"


def test_readyz_stays_ready_without_workers_by_default(client, session_factory, settings):
    # The API can run alone: no worker, or a stale one, is reported but is not fatal.
    assert client.get("/readyz").json()["checks"]["workers"] == "none"
    _beat(session_factory, settings.heartbeat_interval_seconds * 3 + 10)

    response = client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "workers": "stale"},
    }


def test_the_sweeper_row_is_not_a_worker(client, session_factory):
    with session_scope(session_factory) as session:
        record_sweep(session)

    assert client.get("/readyz").json()["checks"]["workers"] == "none"


@pytest.mark.usefixtures("engine")
def test_readyz_requires_a_worker_when_configured(settings, session_factory):
    strict = settings.model_copy(update={"ready_requires_worker": True})
    with client_for(strict) as client:
        none = client.get("/readyz")
        _beat(session_factory, settings.heartbeat_interval_seconds * 3 + 10)
        stale = client.get("/readyz")
        _beat(session_factory, 1, name="celery@worker-2")
        fresh = client.get("/readyz")

    assert none.status_code == 503, none.text
    assert none.json()["checks"]["workers"] == "none"
    assert stale.status_code == 503, stale.text
    assert stale.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "broker": "ok", "workers": "stale"},
    }
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["checks"]["workers"] == "ok"


def test_ready_requires_worker_is_read_from_the_environment(monkeypatch, settings):
    monkeypatch.setenv("RRMM_READY_REQUIRES_WORKER", "true")
    assert Settings(**settings.model_dump(exclude={"ready_requires_worker"})).ready_requires_worker


# --- the bodies are the documented ones ----------------------------------------------------


def _documented(client: TestClient, path: str, status: int) -> str:
    """The component named by the document for this GET response's JSON body."""
    operation = client.app.openapi()["paths"][path]["get"]  # type: ignore[attr-defined]
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    ref: str = schema["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_healthz_sends_its_documented_body(client):
    response = client.get("/healthz")

    assert _documented(client, "/healthz", 200) == "Liveness"
    assert Liveness.model_validate(response.json()).model_dump(mode="json") == response.json()


@pytest.mark.usefixtures("engine")
def test_readyz_sends_its_documented_body_when_ready_and_when_not(client, settings):
    ready = client.get("/readyz")
    with client_for(settings.model_copy(update={"broker_url": DEAD_BROKER})) as unready_client:
        unready = unready_client.get("/readyz")

    assert (ready.status_code, unready.status_code) == (200, 503)
    for status, response in ((200, ready), (503, unready)):
        assert _documented(client, "/readyz", status) == "Readiness"
        body = response.json()
        # Every key sent is documented, and every documented key is sent.
        assert Readiness.model_validate(body).model_dump(mode="json") == body
