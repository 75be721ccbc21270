"""The operators' notice outbox: the deadline decides and queues the notice under the
incident's lock, the sweep sends it after commit. A relay that hangs (a real socket that
accepts and never greets) must not stop a member's answer to the same incident; the notice
is retried with backoff, a bounded number of times, and the timeline says
`operators_notified` only once a relay has accepted it. The STARTTLS modes apply to it as
to the briefings."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.acks import jobs as acks_jobs
from app.acks import outbox
from app.config import Settings
from app.db import session_scope
from app.incidents import jobs as incident_jobs
from app.models import IncidentEvent, IncidentTimer, OperatorNotice
from app.models.base import utcnow
from app.netutil import free_port, wait_until
from app.vocabulary import TimelineEventKind
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign
from tests.support.sinks import HangingSmtpServer, SmtpSink, _MailHandler
from tests.support.smtp_tls import TlsRelay, make_certificates

OPERATOR = "ops@example.org"
DESK = "desk@example.org"
QUOTA = {"network": "editors", "min": 1}
# The hung relay's test: how long the sender would wait on its socket. The answer must not
# wait for it; the relay is released long before it runs out.
HUNG_TIMEOUT = 60.0


def notice_settings(settings: Settings, port: int, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "operator_emails": [OPERATOR],
        "smtp_timeout_seconds": 5.0,
        "operator_notice_retry_seconds": 30.0,
        **update,
    }
    return ack_settings_from(settings, **values)


def incident_at_its_deadline(
    api: Api, session_factory: sessionmaker[Session]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An incident whose coverage quota is unmet, its deadline timer due now."""
    member = api.member(network="editors")
    incident = api.declare(
        [member],
        followup={
            "reminders": 0,
            "reminder_interval_seconds": 60,
            "ack_deadline_seconds": 600,
            "quotas": [QUOTA],
            "notify_emails": [DESK],
        },
    )
    with session_scope(session_factory) as session:
        session.execute(
            update(IncidentTimer)
            .where(IncidentTimer.incident_id == uuid.UUID(incident["id"]))
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
    return incident, member


def the_notice(session_factory: sessionmaker[Session]) -> OperatorNotice:
    with session_factory() as session:
        [notice] = session.scalars(select(OperatorNotice)).all()
        session.expunge(notice)
        return notice


def make_due(session_factory: sessionmaker[Session]) -> None:
    """Time passes: the notice's retry time has come."""
    with session_scope(session_factory) as session:
        session.execute(update(OperatorNotice).values(next_attempt_at=utcnow()))


def kinds(session_factory: sessionmaker[Session], incident: dict[str, Any]) -> list[str]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(IncidentEvent.kind)
                .where(IncidentEvent.incident_id == uuid.UUID(incident["id"]))
                .order_by(IncidentEvent.seq)
            )
        )


def sink_on(port: int) -> SmtpSink:
    """The SMTP sink, listening where the hung relay was: the relay came back."""
    sink = SmtpSink()
    sink.controller.loop.close()  # the one made for its own free port, never started
    sink.port = port
    sink.controller = Controller(
        _MailHandler(sink), hostname="127.0.0.1", port=port, decode_data=False
    )
    return sink.start()


@pytest.fixture
def hanging() -> Iterator[HangingSmtpServer]:
    relay = HangingSmtpServer().start()
    yield relay
    relay.stop()


def test_a_hung_relay_does_not_hold_the_incident_and_the_notice_goes_out_when_it_is_back(
    ack_client: TestClient,
    api: Api,
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
    hanging: HangingSmtpServer,
) -> None:
    settings = notice_settings(ack_settings, hanging.port, smtp_timeout_seconds=HUNG_TIMEOUT)
    incident, member = incident_at_its_deadline(api, session_factory)
    token = sign(ack_settings, delivery_of(session_factory, incident, member).id)
    results: dict[str, int] = {}

    def sweep() -> None:  # what workers.tasks.sweep runs, in this order
        results["timers"] = incident_jobs.fire_due(session_factory, settings, lambda _: None)
        results["notices"] = acks_jobs.send_due(session_factory, settings)

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        wait_until(lambda: hanging._connections, 30, "the sender reached the hung relay")
        # The sender is stuck in the SMTP greeting; the member answers the same incident.
        answer = ack_client.post("/v1/acks", json={"token": token, "response": "will_engage"})
        assert answer.status_code == 200, answer.text
        # The answer did not wait for the relay: the sender is still stuck there.
        assert sweeper.is_alive()
        assert the_notice(session_factory).status == outbox.SENDING
    finally:
        hanging.stop()  # the relay drops the connection
        sweeper.join(HUNG_TIMEOUT)
    assert not sweeper.is_alive()

    # The deadline was decided and committed; the notice failed and waits for its retry.
    assert results == {"timers": 1, "notices": 0}
    with session_factory() as session:
        timer = session.scalars(select(IncidentTimer).where(IncidentTimer.kind == "deadline")).one()
    assert timer.done_at is not None
    assert timer.outcome == "deadline passed, 1 quota(s) unmet: operators' notice queued"
    failed = the_notice(session_factory)
    assert (failed.status, failed.attempts, failed.sent_at) == (outbox.PENDING, 1, None)
    assert failed.last_error is not None
    assert failed.next_attempt_at > utcnow() + timedelta(seconds=20)  # backing off (30 s)
    assert failed.lease_until is None
    assert "operators_notified" not in kinds(session_factory, incident)
    # Not due yet: a sweep now leaves it alone.
    assert acks_jobs.send_due(session_factory, settings) == 0
    assert the_notice(session_factory).attempts == 1

    sink = sink_on(hanging.port)
    try:
        make_due(session_factory)
        assert acks_jobs.send_due(session_factory, settings) == 1
        assert acks_jobs.send_due(session_factory, settings) == 0  # sent once
    finally:
        sink.stop()

    [mail] = sink.received
    assert sorted(mail.recipients) == sorted([OPERATOR, DESK])
    assert mail.message["Subject"] == (
        f"[{incident['reference']}] Acknowledgement deadline passed: quotas unmet"
    )
    assert mail.message["Message-ID"] == f"<rrmm.notice.{failed.id}@rrmm.invalid>"
    text = mail.message.get_body(("plain",))
    assert text is not None
    assert incident["reference"] in text.get_content()
    sent = the_notice(session_factory)
    assert (sent.status, sent.attempts, sent.last_error) == (outbox.SENT, 2, None)
    assert sent.sent_at is not None
    # The timeline: the deadline when it passed, the notice when it went out.
    events = kinds(session_factory, incident)
    assert events.index("deadline") < events.index("operators_notified")
    with session_factory() as session:
        notified = session.scalars(
            select(IncidentEvent).where(IncidentEvent.kind == TimelineEventKind.OPERATORS_NOTIFIED)
        ).one()
    assert notified.detail == {
        "sequence": 1,
        "outcome": "operators notified: 1 quota(s) unmet",
        "attempts": 2,
    }
    assert notified.at == sent.sent_at


def test_attempts_are_bounded_and_back_off(
    api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    closed_port = free_port()  # nothing listens: every attempt is refused at once
    settings = notice_settings(ack_settings, closed_port, operator_notice_max_attempts=3)
    incident, _ = incident_at_its_deadline(api, session_factory)
    assert incident_jobs.fire_due(session_factory, settings, lambda _: None) == 1

    waits = []
    for attempt in (1, 2, 3):
        before = utcnow()
        assert acks_jobs.send_due(session_factory, settings) == 0
        notice = the_notice(session_factory)
        assert notice.attempts == attempt
        assert notice.last_error is not None
        assert "SMTP" in notice.last_error
        waits.append(notice.next_attempt_at - before)
        make_due(session_factory)

    assert notice.status == outbox.FAILED
    # Doubling waits between attempts (30 s, then 60 s), none after the last.
    assert timedelta(seconds=29) < waits[0] <= timedelta(seconds=31)
    assert timedelta(seconds=59) < waits[1] <= timedelta(seconds=61)
    assert acks_jobs.send_due(session_factory, settings) == 0
    assert the_notice(session_factory).attempts == 3  # given up: never tried again
    assert "operators_notified" not in kinds(session_factory, incident)
    assert outbox.retry_delay(settings, 20) == timedelta(hours=1)  # capped


def test_no_notice_without_unmet_quotas_or_addresses(
    api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    settings = notice_settings(ack_settings, free_port(), operator_emails=[])
    member = api.member(network="editors")
    api.declare(
        [member],
        followup={
            "reminders": 0,
            "reminder_interval_seconds": 60,
            "ack_deadline_seconds": 600,
            "quotas": [QUOTA],
        },
    )
    with session_scope(session_factory) as session:
        session.execute(update(IncidentTimer).values(due_at=utcnow() - timedelta(seconds=1)))

    assert incident_jobs.fire_due(session_factory, settings, lambda _: None) == 1

    with session_factory() as session:
        assert session.scalars(select(OperatorNotice)).all() == []
        outcome = session.scalars(select(IncidentTimer.outcome)).one()
    assert outcome == "deadline passed, 1 quota(s) unmet, no operator address configured"


def test_the_notice_follows_the_starttls_mode(
    api: Api, ack_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path)
    plain = TlsRelay(None).start()
    tls = TlsRelay(certificates).start()
    credentials = {"smtp_username": "ops-relay", "smtp_password": SecretStr("never-in-clear")}
    try:
        incident_at_its_deadline(api, session_factory)
        required = notice_settings(
            ack_settings, plain.port, smtp_starttls="required", **credentials
        )
        assert incident_jobs.fire_due(session_factory, required, lambda _: None) == 1
        # The relay does not offer STARTTLS: refused before any password or message.
        assert acks_jobs.send_due(session_factory, required) == 0
        refused = the_notice(session_factory)
        assert "STARTTLS required" in (refused.last_error or "")
        assert plain.auth_attempts == []
        assert plain.received == []

        # Untrusted certificate (no CA file): refused, the password is not sent.
        make_due(session_factory)
        untrusted = notice_settings(
            ack_settings, tls.port, smtp_starttls="opportunistic", **credentials
        )
        assert acks_jobs.send_due(session_factory, untrusted) == 0
        assert "certificate" in (the_notice(session_factory).last_error or "")
        assert tls.auth_attempts == []

        # The private relay's CA is configured: verified, then AUTH, then the notice.
        make_due(session_factory)
        verified = notice_settings(
            ack_settings,
            tls.port,
            smtp_starttls="required",
            smtp_ca_file=certificates.ca_file,
            **credentials,
        )
        assert acks_jobs.send_due(session_factory, verified) == 1
    finally:
        plain.stop()
        tls.stop()

    assert [(a.username, a.tls) for a in tls.auth_attempts] == [("ops-relay", True)]
    assert [r.tls for r in tls.received] == [True]
    assert the_notice(session_factory).status == outbox.SENT


def test_two_senders_never_send_the_same_notice_twice(
    api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    sink = SmtpSink().start()
    try:
        settings = notice_settings(ack_settings, sink.port)
        incident_at_its_deadline(api, session_factory)
        assert incident_jobs.fire_due(session_factory, settings, lambda _: None) == 1
        sent: list[int] = []
        barrier = threading.Barrier(2)

        def sender() -> None:
            barrier.wait()
            sent.append(acks_jobs.send_due(session_factory, settings))

        threads = [threading.Thread(target=sender) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sink.stop()

    assert sorted(sent) == [0, 1]
    assert len(sink.received) == 1
    assert the_notice(session_factory).attempts == 1


def test_a_notice_that_could_inject_a_header_is_given_up_at_once(
    api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    sink = SmtpSink().start()
    try:
        settings = notice_settings(ack_settings, sink.port)
        incident, _ = incident_at_its_deadline(api, session_factory)
        with session_scope(session_factory) as session:
            outbox.add_notice(
                session,
                incident_id=uuid.UUID(incident["id"]),
                kind="deadline",
                sequence=1,
                summary="operators notified",
                recipients=["ops@example.org\r\nBcc: x@evil.test"],
                subject="Deadline",
                body="Body\n",
            )
        assert acks_jobs.send_due(session_factory, settings) == 0
    finally:
        sink.stop()

    notice = the_notice(session_factory)
    assert (notice.status, notice.attempts) == (outbox.FAILED, 1)
    assert (notice.last_error or "").startswith("unsendable")
    assert sink.received == []
