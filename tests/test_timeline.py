"""The timeline: every step of an incident, in order, with who did it, written in the
step's own transaction; and the event numbers it shares with the answers.

Sends are simulated by moving ledger rows (as in test_status); the fan-out start is the
real `dispatch`, its end the real sweep step; timers are fired by the real `fire_due`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.acks.service import record
from app.config import Settings
from app.db import session_scope
from app.deliveries import jobs as deliveries
from app.deliveries import ledger
from app.deliveries.tokens import signer_from_settings
from app.incidents import jobs as incident_jobs
from app.incidents.service import activate_mobilized
from app.models import Ack, Delivery, IncidentEvent, IncidentTimer, Role
from app.models.base import utcnow
from app.vocabulary import DeliveryStatus
from tests.incidents.test_status import Person, add_members, answer, declare, move

Headers = dict[str, str]


def events_of(client: TestClient, headers: Headers, incident_id: str, **query: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = client.get(
            f"/v1/incidents/{incident_id}/timeline", headers=headers, params=params
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def dispatch_all(session_factory: sessionmaker[Session], settings: Settings) -> list[int]:
    queued: list[int] = []
    deliveries.dispatch(session_factory, settings, queued.extend)
    return queued


def settle_everything(session_factory: sessionmaker[Session], incident: dict[str, Any]) -> None:
    """Every open delivery of the incident is sent (what a worker would do)."""
    with session_scope(session_factory) as session:
        for from_status in (
            DeliveryStatus.PENDING,
            DeliveryStatus.SENDING,
            DeliveryStatus.RETRYING,
        ):
            ledger.transition(
                session,
                where=Delivery.incident_id == uuid.UUID(incident["id"]),
                from_status=from_status,
                to_status=DeliveryStatus.SENT,
                values={"sent_at": utcnow()},
                now=utcnow(),
            )


def fire_timers_now(session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Every timer due now, in their order."""
    with session_scope(session_factory) as session:
        timers = session.scalars(select(IncidentTimer).order_by(IncidentTimer.due_at)).all()
        for n, timer in enumerate(timers):
            timer.due_at = utcnow() - timedelta(seconds=len(timers) - n)
    return incident_jobs.fire_due(session_factory, settings, lambda _: None)


def test_the_timeline_tells_the_whole_incident_in_order(
    client: TestClient,
    operator: Headers,
    api_keys: dict[Role, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    members = add_members(
        session_factory,
        [
            Person("editors", "MA", ["fr"]),
            Person("editors", "FR", ["fr"]),
            Person("personalities", "EG", ["ar"]),
        ],
    )
    incident = declare(
        client,
        operator,
        members,
        followup={
            "quotas": [{"network": "editors", "responses": ["will_engage"], "min": 2}],
            "reminders": 1,
            "reminder_interval_seconds": 60,
            "ack_deadline_seconds": 120,
        },
    )
    # The fan-out starts when the rows are queued, once however often they are queued.
    assert dispatch_all(session_factory, settings)
    deliveries.dispatch(session_factory, settings, lambda _: None)
    assert incident_jobs.record_finished_fanouts(session_factory) == 0  # rows still open
    settle_everything(session_factory, incident)
    with session_scope(session_factory) as session:
        assert activate_mobilized(session) == 1  # every first delivery has been tried
    assert incident_jobs.record_finished_fanouts(session_factory) == 1
    assert incident_jobs.record_finished_fanouts(session_factory) == 0  # once
    update_body = {"briefing": {"en": {"subject": "Update", "body": "Calm is returning."}}}
    updated = client.post(
        f"/v1/incidents/{incident['id']}/updates", json=update_body, headers=operator
    )
    assert updated.status_code == 202, updated.text
    answer(session_factory, settings, incident, members[0], "will_engage", 5)
    answer(session_factory, settings, incident, members[1], "will_engage", 6)  # quota met
    answer(session_factory, settings, incident, members[1], "unavailable", 7)  # unmet again
    assert fire_timers_now(session_factory, settings) == 2  # the reminder, the deadline
    resolved = client.post(f"/v1/incidents/{incident['id']}/resolve", headers=operator)
    assert resolved.status_code == 202, resolved.text

    items = events_of(client, operator, incident["id"], limit=2)
    kinds = [item["kind"] for item in items]
    assert kinds == [
        "declared",
        "fanout_started",
        "activated",
        "fanout_finished",
        "updated",
        "quota_met",
        "quota_unmet",
        "reminder",
        "deadline",
        "resolved",
    ], kinds
    by_kind = {item["kind"]: item for item in items}
    # Who: the operator's key for people's actions, nobody for the system's.
    operator_key_name = _key_name(session_factory, api_keys[Role.OPERATOR])
    assert by_kind["declared"]["actor"] == operator_key_name
    assert by_kind["updated"]["actor"] == operator_key_name
    assert by_kind["resolved"]["actor"] == operator_key_name
    assert by_kind["fanout_started"]["actor"] is None
    assert by_kind["reminder"]["actor"] is None
    # What: counts and outcomes.
    assert by_kind["declared"]["detail"]["targeted"] == 3
    assert by_kind["declared"]["briefing_version"] == 1
    assert by_kind["fanout_started"]["briefing_version"] == 1
    finished = by_kind["fanout_finished"]["detail"]
    assert finished["outcomes"] == {"sent": 3}
    assert finished["latency_count"] == 3
    assert finished["latency_buckets"][-1] == 3  # cumulative: every send within the last bound
    assert finished["duration_seconds"] >= 0
    assert by_kind["updated"]["briefing_version"] == 2
    assert by_kind["quota_met"]["detail"] == {"quota_index": 0, "answered": 2, "min": 2}
    assert by_kind["quota_unmet"]["detail"] == {"quota_index": 0, "answered": 1, "min": 2}
    assert by_kind["reminder"]["detail"]["outcome"].startswith("reminded 1 members")
    assert "unmet" in by_kind["deadline"]["detail"]["outcome"]
    # In order, by time and by number; the numbers also order the answers in between.
    seqs = [item["seq"] for item in items]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    with session_scope(session_factory) as session:
        answer_seqs = [
            seq or 0
            for seq in session.scalars(
                select(Ack.event_seq).where(Ack.incident_id == uuid.UUID(incident["id"]))
            )
        ]
    assert len(answer_seqs) == 3
    assert not set(answer_seqs) & set(seqs)
    assert by_kind["updated"]["seq"] < min(answer_seqs) < by_kind["quota_met"]["seq"]
    assert sorted([*seqs, *answer_seqs]) == list(range(1, len(seqs) + len(answer_seqs) + 1))


def _key_name(session_factory: sessionmaker[Session], key: str) -> str:
    from app.auth.service import authenticate

    with session_scope(session_factory) as session:
        return authenticate(session, key).name


def test_the_timeline_is_for_operators_and_checks_its_input(
    client: TestClient,
    operator: Headers,
    auth: Callable[[Role], Headers],
    session_factory: sessionmaker[Session],
) -> None:
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])])
    incident = declare(client, operator, members)
    viewer = client.get(f"/v1/incidents/{incident['id']}/timeline", headers=auth(Role.VIEWER))
    assert viewer.status_code == 403
    unknown = client.get(f"/v1/incidents/{uuid.uuid4()}/timeline", headers=operator)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    bad = client.get(
        f"/v1/incidents/{incident['id']}/timeline", headers=operator, params={"cursor": "x"}
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.cursor"


def test_a_rolled_back_step_leaves_no_event(
    client: TestClient,
    operator: Headers,
    session_factory: sessionmaker[Session],
) -> None:
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])])
    incident = declare(client, operator, members)
    resolved = client.post(f"/v1/incidents/{incident['id']}/resolve", headers=operator)
    assert resolved.status_code == 202
    # An update of a resolved incident is refused: its event must not exist either.
    refused = client.post(
        f"/v1/incidents/{incident['id']}/updates",
        json={"briefing": {"en": {"subject": "Late", "body": "Too late."}}},
        headers=operator,
    )
    assert refused.status_code == 409
    kinds = [item["kind"] for item in events_of(client, operator, incident["id"])]
    assert kinds == ["declared", "resolved"]


def test_concurrent_answers_get_distinct_numbers_and_one_quota_crossing(
    client: TestClient,
    operator: Headers,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    """Twelve members answer at once: twelve distinct numbers with no gap, and the quota of
    five is crossed by exactly one of them."""
    members = add_members(session_factory, [Person("editors", "MA", ["fr"])] * 12)
    incident = declare(
        client,
        operator,
        members,
        followup={"quotas": [{"network": "editors", "responses": ["will_engage"], "min": 5}]},
    )
    for member in members:
        move(session_factory, incident, member, DeliveryStatus.SENT)
    signer = signer_from_settings(settings)
    with session_scope(session_factory) as session:
        tokens = [
            signer.sign(delivery_id, utcnow() + timedelta(days=1))
            for delivery_id in session.scalars(
                select(Delivery.id).where(
                    Delivery.incident_id == uuid.UUID(incident["id"]), Delivery.channel == "email"
                )
            )
        ]
    errors: list[BaseException] = []
    start = threading.Barrier(len(tokens))

    def answer_with(token: str) -> None:
        try:
            start.wait()
            for attempt in range(20):
                try:
                    with session_scope(session_factory) as session:
                        record(
                            session,
                            signer,
                            token,
                            response="will_engage",
                            comment=None,
                            route="api",
                        )
                    return
                except Exception as exc:  # SQLite's single writer may say "locked": retry
                    if "locked" not in str(exc) or attempt == 19:
                        raise
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=answer_with, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with session_scope(session_factory) as session:
        incident_id = uuid.UUID(incident["id"])
        answer_seqs = sorted(
            seq or 0
            for seq in session.scalars(select(Ack.event_seq).where(Ack.incident_id == incident_id))
        )
        crossings = list(
            session.scalars(
                select(IncidentEvent.detail).where(
                    IncidentEvent.incident_id == incident_id, IncidentEvent.kind == "quota_met"
                )
            )
        )
        event_seqs = list(
            session.scalars(
                select(IncidentEvent.seq).where(IncidentEvent.incident_id == incident_id)
            )
        )
    assert len(answer_seqs) == 12
    assert len(set(answer_seqs)) == 12
    assert crossings == [{"quota_index": 0, "answered": 5, "min": 5}]
    assert sorted([*answer_seqs, *event_seqs]) == list(range(1, 12 + len(event_seqs) + 1))
