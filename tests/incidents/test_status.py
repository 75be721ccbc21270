"""Status and coverage for dashboards: figures from counters, ETag polling, a cost that does
not grow with the roster, and nothing personal for viewers.

Sends are simulated by moving ledger rows with `ledger.transition`; answers are recorded
with real signed tokens through the acknowledgement service.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from app.acks.service import record
from app.auth.service import create_key, revoke_key
from app.config import Settings
from app.db import session_scope
from app.deliveries import ledger
from app.deliveries.tokens import signer_from_settings
from app.incidents import followup
from app.main import create_app
from app.models import Delivery, Member, Role
from app.models.base import utcnow
from app.principal import Principal
from app.state import app_state
from app.vocabulary import DeliveryStatus
from tests.support.clock import ManualClock
from tests.support.factories import PUBLIC_WEBHOOK, assert_problem, briefing, declare_body

Headers = dict[str, str]
SECRET_COMMENT = "private remark about the editor-in-chief"


@dataclass(frozen=True)
class Person:
    network: str
    country: str
    languages: list[str]
    webhook: bool = False


def add_members(
    session_factory: sessionmaker[Session], people: list[Person]
) -> list[dict[str, str]]:
    """Members written straight to the table (the roster is not what is under test here)."""
    made = []
    with session_scope(session_factory) as session:
        for n, person in enumerate(people):
            tag = uuid.uuid4().hex[:8]
            member = Member(
                network=person.network,
                name=f"Nadia Qasimi-{tag}",
                organization="Al Wasat",
                country=person.country,
                languages=person.languages,
                themes=["religious-hatred"],
                tags=[],
                email=f"nadia.{tag}.{n}@example.org",
                webhook_url=PUBLIC_WEBHOOK if person.webhook else None,
                timezone="UTC",
                consent_given_at=utcnow(),
                consent_method="written",
            )
            session.add(member)
            session.flush()
            made.append({"id": str(member.id), "name": member.name, "email": member.email or ""})
    return made


def declare(
    client: TestClient, headers: Headers, members: list[dict[str, str]], **overrides: Any
) -> dict[str, Any]:
    body = declare_body(
        **{
            "audience": {"member_ids": [m["id"] for m in members]},
            "briefing": briefing(en="", fr="", ar=""),
            **overrides,
        }
    )
    response = client.post("/v1/incidents", json=body, headers=headers)
    assert response.status_code == 202, response.text
    incident: dict[str, Any] = response.json()
    return incident


def move(
    session_factory: sessionmaker[Session],
    incident: dict[str, Any],
    member: dict[str, str],
    to_status: str,
    *,
    channel: str = "email",
    error: str | None = None,
) -> None:
    """A send's outcome, written by the ledger's own transition (its counters follow)."""
    values: dict[str, Any] = {"sent_at": utcnow()} if to_status == DeliveryStatus.SENT else {}
    if error is not None:
        values["last_error"] = error
    with session_scope(session_factory) as session:
        changed = ledger.transition(
            session,
            where=(Delivery.incident_id == uuid.UUID(incident["id"]))
            & (Delivery.member_id == uuid.UUID(member["id"]))
            & (Delivery.channel == channel),
            from_status=DeliveryStatus.PENDING,
            to_status=to_status,
            values=values,
            now=utcnow(),
        )
        assert changed


def answer(
    session_factory: sessionmaker[Session],
    settings: Settings,
    incident: dict[str, Any],
    member: dict[str, str],
    response: str,
    seconds: float,
) -> None:
    """Answer `seconds` after the declaration, through the member's email link."""
    signer = signer_from_settings(settings)
    with session_scope(session_factory) as session:
        delivery_id = session.scalar(
            select(Delivery.id).where(
                Delivery.incident_id == uuid.UUID(incident["id"]),
                Delivery.member_id == uuid.UUID(member["id"]),
                Delivery.channel == "email",
            )
        )
        assert delivery_id is not None
        token = signer.sign(delivery_id, utcnow() + timedelta(days=1))
        declared = datetime.fromisoformat(incident["declared_at"])
        record(
            session,
            signer,
            token,
            response=response,
            comment=SECRET_COMMENT,
            route="api",
            now=declared + timedelta(seconds=seconds),
        )


@pytest.fixture
def viewer(auth: Callable[[Role], Headers]) -> Headers:
    return auth(Role.VIEWER)


@dataclass
class Scenario:
    incident: dict[str, Any]
    members: list[dict[str, str]]


@pytest.fixture
def scenario(
    client: TestClient,
    operator: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> Scenario:
    """Four members: three reached, one whose email failed; three answers (one changed).

    m0 editors/MA fr · m1 editors/FR fr · m2 personalities/EG ar (email sent, webhook
    failed) · m3 personalities/MA en (email failed).
    """
    members = add_members(
        session_factory,
        [
            Person("editors", "MA", ["fr", "en"]),
            Person("editors", "FR", ["fr"]),
            Person("personalities", "EG", ["ar", "en"], webhook=True),
            Person("personalities", "MA", ["en"]),
        ],
    )
    quotas = [
        {"network": "editors", "responses": ["will_engage"], "min": 2},
        {"countries": ["MA"], "responses": ["acknowledged", "will_engage"], "min": 2},
    ]
    incident = declare(
        client,
        operator,
        members,
        followup={"quotas": quotas, "reminders": 1, "reminder_interval_seconds": 1},
    )
    for member in members[:3]:
        move(session_factory, incident, member, DeliveryStatus.SENT)
    move(session_factory, incident, members[2], DeliveryStatus.FAILED, channel="webhook")
    move(session_factory, incident, members[3], DeliveryStatus.FAILED)
    answer(session_factory, settings, incident, members[0], "will_engage", 10)
    answer(session_factory, settings, incident, members[1], "will_engage", 20)
    answer(session_factory, settings, incident, members[2], "acknowledged", 40)
    answer(session_factory, settings, incident, members[2], "unavailable", 50)
    return Scenario(incident, members)


def status_of(client: TestClient, headers: Headers, incident_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/incidents/{incident_id}/status", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- status --------------------------------------------------------------------------------


def test_status_figures(
    client: TestClient,
    viewer: Headers,
    scenario: Scenario,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    incident = scenario.incident
    status = status_of(client, viewer, incident["id"])
    assert status["id"] == incident["id"]
    assert status["reference"] == incident["reference"]
    assert (status["status"], status["mode"], status["severity"]) == (
        "mobilizing",
        "actual",
        "severe",
    )
    assert status["targeted"] == 4
    assert status["deliveries"] == {
        "by_status": {"sent": 3, "failed": 2},
        "by_channel": {"email": {"sent": 3, "failed": 1}, "webhook": {"failed": 1}},
    }
    answers = status["answers"]
    assert answers["answered"] == 3
    assert answers["by_response"] == {"will_engage": 2, "unavailable": 1}
    assert answers["ack_rate"] == 0.75
    assert answers["first_answer_seconds"] == pytest.approx(10, abs=0.01)
    # The median of 10, 20 and 40 s is 20 s, read from a histogram (±4.5%).
    assert answers["median_answer_seconds"] == pytest.approx(20, rel=0.05)
    assert [(q["targeted"], q["answered"], q["met"]) for q in status["quotas"]] == [
        (2, 2, True),
        (2, 1, False),
    ]
    assert status["quotas"][0]["network"] == "editors"
    assert status["followup"] == {
        "reminders": [],
        "escalations": [],
        "reminder_versions": [],
        "escalation_versions": [],
    }
    assert status["last_change_at"] >= status["updated_at"]

    # The reminder round: m3 (MA, silent; MA's quota unmet) is reminded, in version 2.
    with session_scope(session_factory) as session:
        timer = followup.take_due_timer(session, utcnow() + timedelta(seconds=5))
        assert timer is not None
        assert timer.kind == "reminder"
        timer.outcome = followup.fire(session, timer, settings=settings, dispatch=lambda _: None)
    status = status_of(client, viewer, incident["id"])
    [reminder] = status["followup"]["reminders"]
    assert reminder["sequence"] == 1
    assert reminder["outcome"] == "reminded 1 members (1 deliveries)"
    assert status["followup"]["reminder_versions"] == [2]
    assert status["deliveries"]["by_status"] == {"sent": 3, "failed": 2, "pending": 1}
    assert status["last_change_at"] >= reminder["fired_at"]


def test_status_counts_members_added_by_an_update(
    client: TestClient, operator: Headers, session_factory: sessionmaker[Session]
) -> None:
    [first] = add_members(session_factory, [Person("editors", "MA", ["fr"])])
    incident = declare(
        client,
        operator,
        [first],
        audience={"networks": ["editors"]},
        followup={"quotas": [{"countries": ["FR"], "min": 1}]},
    )
    add_members(session_factory, [Person("editors", "FR", ["fr"]), Person("editors", "FR", [])])
    update = {"briefing": briefing(en="")}
    response = client.post(f"/v1/incidents/{incident['id']}/updates", json=update, headers=operator)
    assert response.status_code == 202, response.text
    assert response.json()["targeted"] == 3
    status = status_of(client, operator, incident["id"])
    assert status["targeted"] == 3
    assert [(q["targeted"], q["answered"]) for q in status["quotas"]] == [(2, 0)]
    assert status["answers"] == {
        "answered": 0,
        "by_response": {},
        "ack_rate": 0.0,
        "first_answer_seconds": None,
        "median_answer_seconds": None,
    }


def test_etag_polling(
    client: TestClient,
    viewer: Headers,
    operator: Headers,
    session_factory: sessionmaker[Session],
) -> None:
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])] * 2)
    incident = declare(client, operator, members)
    url = f"/v1/incidents/{incident['id']}/status"
    first = client.get(url, headers=viewer)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = client.get(url, headers=viewer)
    assert again.headers["etag"] == etag
    assert again.content == first.content

    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = client.get(url, headers={**viewer, "If-None-Match": tag})
        assert cached.status_code == 304, tag
        assert cached.content == b""
        assert cached.headers["etag"] == etag
        assert cached.headers["cache-control"] == "no-cache"
    assert client.get(url, headers={**viewer, "If-None-Match": '"other"'}).status_code == 200

    move(session_factory, incident, members[0], DeliveryStatus.SENT)
    changed = client.get(url, headers={**viewer, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["deliveries"]["by_status"] == {"sent": 1, "pending": 1}


def test_each_process_serves_a_status_for_its_cache_time(
    client: TestClient,
    settings: Settings,
    viewer: Headers,
    operator: Headers,
    session_factory: sessionmaker[Session],
) -> None:
    """With `RRMM_STATUS_CACHE_SECONDS`, a change shows once the cached document expires
    (a crowd of pollers costs one read per incident per period)."""
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])] * 2)
    incident = declare(client, operator, members)
    url = f"/v1/incidents/{incident['id']}/status"
    caching = settings.model_copy(update={"status_cache_seconds": 3})
    clock = ManualClock()
    cached_app = create_app(caching)
    app_state(cached_app).status_cache.clock = clock
    with TestClient(cached_app) as cached_client:
        first = cached_client.get(url, headers=viewer)
        move(session_factory, incident, members[0], DeliveryStatus.SENT)
        clock.advance(2.9)
        within = cached_client.get(url, headers=viewer)
        assert within.headers["etag"] == first.headers["etag"]  # served from memory
        assert client.get(url, headers=viewer).headers["etag"] != first.headers["etag"]
        clock.advance(0.2)
        after = cached_client.get(url, headers=viewer)
    assert after.headers["etag"] != first.headers["etag"]
    assert after.json()["deliveries"]["by_status"] == {"sent": 1, "pending": 1}


def test_polls_answered_from_memory_match_the_route_and_a_revoked_key_expires(
    client: TestClient,
    settings: Settings,
    operator: Headers,
    session_factory: sessionmaker[Session],
) -> None:
    """With both caches on, a repeated poll is answered from memory (app/incidents/polls.py):
    the same status, bytes, ETag and headers as the route's; what the route would refuse
    still goes to the route; a revoked key is refused once its cached verification expires
    (`RRMM_API_KEY_CACHE_SECONDS`)."""
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])])
    incident = declare(client, operator, members)
    url = f"/v1/incidents/{incident['id']}/status"
    with session_scope(session_factory) as session:
        key, plaintext = create_key(
            session, name="wall-screen", role=Role.VIEWER, actor=Principal.cli()
        )
        key_id = key.id
    viewer = {"Authorization": f"Bearer {plaintext}"}
    caching = settings.model_copy(update={"status_cache_seconds": 30, "api_key_cache_seconds": 1.5})
    seen: list[str] = []
    with TestClient(create_app(caching)) as cached_client:
        routed = cached_client.get(url, headers=viewer)  # fills both caches
        assert routed.status_code == 200, routed.text
        remembered = cached_client.get(url, headers=viewer)
        assert remembered.status_code == 200
        assert remembered.content == routed.content
        for name in ("etag", "cache-control", "content-type", "content-length"):
            assert remembered.headers[name] == routed.headers[name], name
        etag = routed.headers["etag"]
        not_modified = cached_client.get(url, headers={**viewer, "If-None-Match": etag})
        assert (not_modified.status_code, not_modified.content) == (304, b"")
        assert not_modified.headers["etag"] == etag
        weak = cached_client.get(url, headers={**viewer, "If-None-Match": f'"x", W/{etag}'})
        assert weak.status_code == 304
        # Refusals are the route's, cached document or not.
        assert_problem(cached_client.get(url), 401)
        assert_problem(cached_client.get(url, headers={"Authorization": "Bearer nope"}), 401)
        assert_problem(cached_client.get(url, headers={**viewer, "If-None-Match": "x" * 1001}), 422)
        metrics = cached_client.get("/metrics")
        seen.append(metrics.text)
        with session_scope(session_factory) as session:
            revoke_key(session, key_id=key_id, actor=Principal.cli())
        time.sleep(1.6)
        refused = cached_client.get(url, headers=viewer)
    assert_problem(refused, 401)
    # The access log's metrics name the route template, however the poll was answered.
    assert 'route="/v1/incidents/{incident_id}/status"' in seen[0]


def test_status_304_is_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/incidents/{incident_id}/status"]
    assert "304" in operation["get"]["responses"]


@pytest.fixture
def statements(client: TestClient) -> Iterator[list[str]]:
    """The SQL the app's engine runs, while the fixture is active."""
    seen: list[str] = []
    engine = app_state(client.app).engine  # type: ignore[arg-type]

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    yield seen
    event.remove(engine, "before_cursor_execute", before)


def test_status_cost_does_not_grow_with_the_roster(
    client: TestClient,
    operator: Headers,
    viewer: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
    statements: list[str],
) -> None:
    quota = {"followup": {"quotas": [{"network": "editors", "min": 1}]}}
    counts = []
    for size in (5, 200):
        members = add_members(session_factory, [Person("editors", "MA", ["fr"])] * size)
        incident = declare(client, operator, members, **quota)
        for member in members[:3]:
            move(session_factory, incident, member, DeliveryStatus.SENT)
            answer(session_factory, settings, incident, member, "will_engage", 5)
        status_of(client, viewer, incident["id"])  # warm: the key's first use is written
        statements.clear()
        body = status_of(client, viewer, incident["id"])
        assert body["targeted"] == size
        assert body["answers"]["answered"] == 3
        assert body["quotas"][0]["targeted"] == size
        counts.append(len(statements))
        for statement in statements:
            sql = " ".join(statement.lower().split())
            assert not re.search(r"\b(deliveries|incident_targets)\b", sql), sql
            if "current_acks" in sql:
                assert "count(" not in sql, sql
                assert "limit" in sql, sql
    assert counts[0] == counts[1] > 0, counts


# --- coverage ------------------------------------------------------------------------------


def coverage_of(client: TestClient, headers: Headers, incident_id: str, by: str) -> Any:
    response = client.get(
        f"/v1/incidents/{incident_id}/coverage", params={"by": by}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["by"] == by
    assert body["id"] == incident_id
    return {g.pop("group"): g for g in body["groups"]}


def funnel(targeted: int, sent: int, failed: int, answered: int) -> dict[str, int]:
    return {"targeted": targeted, "sent": sent, "failed": failed, "answered": answered}


def test_coverage(client: TestClient, viewer: Headers, scenario: Scenario) -> None:
    iid = scenario.incident["id"]
    assert coverage_of(client, viewer, iid, "network") == {
        "editors": funnel(2, 2, 0, 2),
        "personalities": funnel(2, 1, 1, 1),
    }
    assert coverage_of(client, viewer, iid, "country") == {
        "EG": funnel(1, 1, 0, 1),
        "FR": funnel(1, 1, 0, 1),
        "MA": funnel(2, 1, 1, 1),
    }
    assert coverage_of(client, viewer, iid, "language") == {
        "ar": funnel(1, 1, 0, 1),
        "en": funnel(1, 0, 1, 0),
        "fr": funnel(2, 2, 0, 2),
    }
    assert coverage_of(client, viewer, iid, "channel") == {
        "email": funnel(4, 3, 1, 3),
        "webhook": funnel(1, 0, 1, 0),
    }


def test_viewer_sees_no_personal_data(
    client: TestClient, viewer: Headers, scenario: Scenario
) -> None:
    iid = scenario.incident["id"]
    texts = [client.get(f"/v1/incidents/{iid}/status", headers=viewer).text]
    for by in ("network", "country", "language", "channel"):
        texts.append(
            client.get(f"/v1/incidents/{iid}/coverage", params={"by": by}, headers=viewer).text
        )
    secrets = [
        SECRET_COMMENT,
        "Nadia",
        "Qasimi",
        "example.org",
        "Al Wasat",
        "Subject in",
        "Body in",
        "Point one",
        PUBLIC_WEBHOOK,
    ]
    for member in scenario.members:
        secrets += [member["name"], member["email"], member["id"]]
    for text in texts:
        for secret in secrets:
            assert secret not in text, secret


def test_not_found_and_bad_grouping(
    client: TestClient, viewer: Headers, scenario: Scenario
) -> None:
    unknown = uuid.uuid4()
    assert_problem(client.get(f"/v1/incidents/{unknown}/status", headers=viewer), 404)
    assert_problem(client.get(f"/v1/incidents/{unknown}/coverage?by=network", headers=viewer), 404)
    base = f"/v1/incidents/{scenario.incident['id']}/coverage"
    assert_problem(client.get(f"{base}?by=name", headers=viewer), 422, "by")
    assert_problem(client.get(base, headers=viewer), 422, "by")
