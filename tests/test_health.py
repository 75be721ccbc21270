"""Liveness and readiness probes, against real and unreachable dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import make_client

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
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_when_the_broker_is_unreachable(settings, engine):
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
