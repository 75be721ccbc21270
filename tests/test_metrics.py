"""`/metrics`: HTTP latency by route template, and business gauges read from the database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import sweep
from app.acks.service import record
from app.config import Settings
from app.db import session_scope
from app.deliveries import jobs as deliveries
from app.deliveries import ledger
from app.deliveries.tokens import signer_from_settings
from app.health.service import record_heartbeat, record_sweep
from app.incidents import jobs as incident_jobs
from app.metrics import UNMATCHED
from app.models import Delivery
from app.models.base import utcnow
from app.state import app_state
from app.vocabulary import DeliveryStatus
from tests.support.factories import assert_problem, declare_body, member_payload

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def seed(client: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    """Two members, an incident (its ledger rows pending), and the ids involved."""
    members = []
    for name in ("Amina Haddad", "Jean Dupont"):
        payload = member_payload(name=name, quiet_hours=None)
        response = client.post("/v1/members", json=payload, headers=operator)
        assert response.status_code == 201, response.text
        members.append({**response.json(), "email": payload["email"]})
    incident = client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert incident.status_code == 202, incident.text
    return {"members": members, "incident_id": incident.json()["id"]}


def test_metrics_need_no_key_and_expose_the_families(client):
    _text, samples = scrape(client)

    names = {name for name, _labels in samples}
    assert value(samples, "rrmm_metrics_database_up") == 1
    assert value(samples, "rrmm_delivery_oldest_due_age_seconds") == 0
    assert value(samples, "rrmm_workers_up") == 0
    assert value(samples, "rrmm_incidents", status="active") == 0
    assert "rrmm_worker_last_heartbeat_age_seconds" not in names  # no worker ever seen
    assert "rrmm_sweeper_last_run_age_seconds" not in names


def test_http_latency_is_labelled_by_route_template(client, operator):
    data = seed(client, operator)
    incident_id = data["incident_id"]
    token = "tok_" + uuid.uuid4().hex
    client.get(f"/v1/incidents/{incident_id}", headers=operator)
    client.get(f"/v1/incidents/{incident_id}", headers=operator)
    client.get(f"/ack/{token}")
    client.get(f"/no/such/{uuid.uuid4()}")

    text, samples = scrape(client)

    count = "rrmm_http_request_duration_seconds_count"
    assert (
        value(samples, count, route="/v1/incidents/{incident_id}", method="GET", status="200") == 2
    )
    assert value(samples, count, route="/v1/incidents", method="POST", status="202") == 1
    ack_page = [
        labels for name, labels in samples if name == count and ("route", "/ack/{token}") in labels
    ]
    assert ack_page, "the ack page is counted under its template"
    assert value(samples, count, route=UNMATCHED, method="GET", status="404") == 1
    routes = {dict(labels)["route"] for name, labels in samples if name == count}
    for route in routes:
        assert route == UNMATCHED or route.startswith("/"), route
    assert token not in text
    assert incident_id not in text
    assert not UUID.search(text), "no id in any label"


def answer_by_link(
    session_factory: sessionmaker[Session],
    settings: Settings,
    delivery_id: int,
    response: str,
    comment: str | None = None,
) -> None:
    """A member's answer through their delivery's signed link (the real recording path)."""
    signer = signer_from_settings(settings)
    token = signer.sign(delivery_id, utcnow() + timedelta(days=1))
    with session_scope(session_factory) as session:
        record(session, signer, token, response=response, comment=comment, route="api")


def test_business_gauges_follow_the_database(
    client: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    data = seed(client, operator)
    incident_id = uuid.UUID(data["incident_id"])
    now = utcnow()
    with session_scope(session_factory) as session:
        rows = list(
            session.scalars(
                select(Delivery).where(Delivery.incident_id == incident_id).order_by(Delivery.id)
            )
        )
        assert len(rows) == 2  # two members by email
        first, second = rows
        # One sent (and answered), one still pending and waiting for two minutes.
        ledger.transition(
            session,
            where=Delivery.id == first.id,
            from_status=DeliveryStatus.PENDING,
            to_status=DeliveryStatus.SENT,
            values={"sent_at": now},
            now=now,
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == second.id)
            .values(created_at=now - timedelta(seconds=120), next_attempt_at=None)
        )
        record_heartbeat(session, "celery@worker-1", at=now - timedelta(seconds=5))
        record_sweep(session, at=now - timedelta(seconds=1))

    answer_by_link(session_factory, settings, first.id, "will_engage", "Private comment")

    text, samples = scrape(client)

    assert value(samples, "rrmm_deliveries", channel="email", status="sent") == 1
    assert value(samples, "rrmm_deliveries", channel="email", status="pending") == 1
    assert 120 <= value(samples, "rrmm_delivery_oldest_due_age_seconds") < 180
    assert value(samples, "rrmm_current_answers", response="will_engage") == 1
    statuses = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "rrmm_incidents"
    }
    assert sum(statuses.values()) == 1
    assert value(samples, "rrmm_workers_up") == 1
    assert 5 <= value(samples, "rrmm_worker_last_heartbeat_age_seconds") < 60
    assert 1 <= value(samples, "rrmm_sweeper_last_run_age_seconds") < 60
    # Aggregates only: no contact detail, name, comment or briefing text.
    for member in data["members"]:
        assert member["email"] not in text
        assert member["name"] not in text
        assert member["id"] not in text
    for leaked in ("Private comment", "Subject in", "Body in", "worker-1", "Tension"):
        assert leaked not in text


def test_stale_heartbeat_is_not_up(
    client: TestClient, session_factory: sessionmaker[Session], settings: Any
) -> None:
    stale = utcnow() - timedelta(seconds=settings.heartbeat_interval_seconds * 3 + 30)
    with session_scope(session_factory) as session:
        record_heartbeat(session, "celery@old", at=stale)

    _text, samples = scrape(client)

    assert value(samples, "rrmm_workers_up") == 0
    assert value(samples, "rrmm_worker_last_heartbeat_age_seconds") > 75


def test_each_sweep_is_recorded(
    client: TestClient, session_factory: sessionmaker[Session], settings: Any
) -> None:
    published: list[list[int]] = []
    _text, before = scrape(client)
    sweep.sweep(session_factory, settings, published.append)
    sweep.sweep(session_factory, settings, published.append)

    _text, samples = scrape(client)

    assert value(before, "rrmm_sweeper_runs_total") == 0
    assert value(samples, "rrmm_sweeper_runs_total") == 2
    assert 0 <= value(samples, "rrmm_sweeper_last_run_age_seconds") < 60
    assert value(samples, "rrmm_workers_up") == 0  # the sweeper's row is not a worker


def test_fanout_latency_and_duration_histograms(
    client: TestClient, operator: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """A finished fan-out adds its sends to the latency histogram and itself to the
    duration histogram; an unfinished one adds nothing yet."""

    settings: Settings = app_state(client.app).settings  # type: ignore[arg-type]
    data = seed(client, operator)
    incident_id = uuid.UUID(data["incident_id"])
    deliveries.dispatch(session_factory, settings, lambda _: None)  # the fan-out starts
    _, before = scrape(client)
    assert value(before, "rrmm_fanout_duration_seconds_count") == 0
    assert value(before, "rrmm_delivery_latency_seconds_count") == 0
    with session_scope(session_factory) as session:
        created = session.scalar(
            select(Delivery.created_at).where(Delivery.incident_id == incident_id)
        )
        assert created is not None
        rows = session.scalars(select(Delivery.id).where(Delivery.incident_id == incident_id)).all()
        # Sent 3 s and 40 s after the briefing was created.
        for delivery_id, delay in zip(rows, (3, 40), strict=True):
            ledger.transition(
                session,
                where=Delivery.id == delivery_id,
                from_status=DeliveryStatus.PENDING,
                to_status=DeliveryStatus.SENT,
                values={"sent_at": created + timedelta(seconds=delay)},
                now=utcnow(),
            )
    assert incident_jobs.record_finished_fanouts(session_factory) == 1

    _, after = scrape(client)

    assert value(after, "rrmm_delivery_latency_seconds_count") == 2
    assert value(after, "rrmm_delivery_latency_seconds_bucket", le="2.0") == 0
    assert value(after, "rrmm_delivery_latency_seconds_bucket", le="5.0") == 1
    assert value(after, "rrmm_delivery_latency_seconds_bucket", le="60.0") == 2
    assert value(after, "rrmm_delivery_latency_seconds_bucket", le="+Inf") == 2
    assert 42 <= value(after, "rrmm_delivery_latency_seconds_sum") <= 44
    assert value(after, "rrmm_fanout_duration_seconds_count") == 1
    assert value(after, "rrmm_fanout_duration_seconds_bucket", le="+Inf") == 1


# ---------------------------------------------------------------------------- cost and access


@pytest.fixture
def statements(client: TestClient) -> Iterator[list[str]]:
    """The SQL the app's engine runs while the fixture is active."""
    seen: list[str] = []
    engine = app_state(client.app).engine  # type: ignore[arg-type]

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.lower().split()))

    event.listen(engine, "before_cursor_execute", before)
    yield seen
    event.remove(engine, "before_cursor_execute", before)


def test_a_scrape_reads_counter_rows_not_the_answers(
    client: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
    statements: list[str],
) -> None:
    data = seed(client, operator)
    with session_factory() as session:
        first, second = session.scalars(
            select(Delivery.id)
            .where(Delivery.incident_id == uuid.UUID(data["incident_id"]))
            .order_by(Delivery.id)
        ).all()
    answer_by_link(session_factory, settings, first, "will_engage")
    answer_by_link(session_factory, settings, second, "will_engage")
    answer_by_link(session_factory, settings, second, "unavailable")  # changed their mind
    statements.clear()

    _text, samples = scrape(client)

    assert value(samples, "rrmm_current_answers", response="will_engage") == 1
    assert value(samples, "rrmm_current_answers", response="unavailable") == 1
    assert statements, "the scrape ran its queries on this engine"
    for sql in statements:
        # Neither the answers' history nor the current answers are read, only counters.
        assert not re.search(r"\b(acks|current_acks)\b", sql), sql


TOKEN = "metrics-" + "7f3c9a1e5b2d4c6f8a0e1b3d5c7f9a2e"


@pytest.fixture
def guarded(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory(metrics_token=SecretStr(TOKEN))


def test_with_a_token_set_metrics_need_it(guarded: TestClient) -> None:
    attempts: list[dict[bytes, bytes]] = [
        {},
        {b"Authorization": b"Bearer wrong-token"},
        {b"Authorization": f"Bearer {TOKEN}x".encode()},
        {b"Authorization": f"Basic {TOKEN}".encode()},
        {b"Authorization": TOKEN.encode()},
        {b"Authorization": "Bearer é".encode()},  # not ASCII: still a 401, not a 500
    ]
    for headers in attempts:
        response = guarded.get("/metrics", headers=headers)
        body = assert_problem(response, 401)
        assert "RRMM_METRICS_TOKEN" in body["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in response.text

    response = guarded.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert "rrmm_metrics_database_up 1.0" in response.text


def test_without_a_token_metrics_stay_open(client: TestClient) -> None:
    # The embedded default: a local Prometheus needs nothing.
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_an_empty_metrics_token_means_no_token() -> None:
    # Compose passes an unset variable as an empty string: that must not become a token
    # which an empty `Bearer` header matches.
    settings = Settings(mode="embedded", metrics_token="  ", secret_key=TOKEN * 2)
    assert settings.metrics_token is None
