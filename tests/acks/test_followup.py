"""Chasing silence with a real worker and beat: reminder rounds, coverage quotas,
escalation to a second tier, the operators' notice at the deadline, the end of an incident
and a worker restart. Every step is an `incident_timers` row fired once by beat's sweep.

One test per timer kind (reminder, escalation, deadline) runs on the wall clock, rounds a
few seconds apart, fired by the worker's own beat. The others declare timers far ahead and
fire them at a test clock (app/clock.py, `fire_timers`), so they wait for no timer. Every
assertion is made on what crossed a socket (the webhook receiver, the SMTP sink) and on the
ledger and timer tables.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.broker import DISPATCH_TASK, create_publisher
from app.config import Settings
from app.incidents import jobs as incident_jobs
from app.models import Ack, Briefing, Delivery, IncidentTimer, Role
from app.models.base import utcnow
from app.netutil import wait_until
from tests.deliveries import conftest as delivery_fixtures
from tests.support.clock import ManualClock
from tests.support.factories import declare_body, wait_final
from tests.support.sinks import CaughtMail, Hit, SmtpSink, WebhookReceiver
from tests.support.worker import WorkerProcess, worker_environment

pytestmark = pytest.mark.slow

# The fixtures of the delivery tests, shared as they are (a real API, members whose webhooks
# point at the receiver; the sinks come from tests/conftest.py); the worker below adds
# operator addresses to its env.
purge_broker = delivery_fixtures.purge_broker
fanout_client = delivery_fixtures.fanout_client
add_member = delivery_fixtures.add_member

OPERATOR = "ops@example.org"  # RRMM_OPERATOR_EMAILS of the worker
WAIT = 45.0  # patience for anything the worker does (2 busy cores)
SETTLE = 1.5  # extra time given to a duplicate to show up before counting
MESSAGE_ID = re.compile(r"^<rrmm\.delivery\.(\d+)@")


@pytest.fixture
def worker_env(settings: Settings, smtp: SmtpSink, tmp_path: Path) -> dict[str, str]:
    return worker_environment(
        settings,
        smtp_port=smtp.port,
        var_dir=tmp_path / "worker",
        extra={"RRMM_OPERATOR_EMAILS": json.dumps([OPERATOR])},
    )


def start_worker(env: dict[str, str]) -> WorkerProcess:
    """Start a worker with beat and wait until it takes tasks (timers are relative to the
    declaration: declaring before the worker is up would eat the first round's margin)."""
    log_path = Path(env["RRMM_VAR_DIR"]) / "worker.log"
    before = log_path.read_text(errors="replace").count(" ready.") if log_path.exists() else 0
    process = WorkerProcess(env).start()
    try:
        wait_until(lambda: process.log().count(" ready.") > before, 60, "the worker is ready")
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture
def worker(worker_env: dict[str, str], purge_broker: None) -> Iterator[WorkerProcess]:  # noqa: ARG001 (requested for its effect: an empty broker)
    process = start_worker(worker_env)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fire_timers(
    settings: Settings, session_factory: sessionmaker[Session]
) -> Iterator[Callable[[ManualClock], int]]:
    """Beat's timer step (`incidents.jobs.fire_due`) at the test's clock, publishing what it
    dispatches to the real broker as the worker's sweep does. Tests that use it declare
    timers far enough ahead that the worker's own beat never reaches them."""
    publisher = create_publisher(settings.model_copy(update={"operator_emails": [OPERATOR]}))

    def dispatch(briefing_id: int) -> None:
        publisher.send_task(DISPATCH_TASK, args=(briefing_id,))

    def fire(clock: ManualClock) -> int:
        return incident_jobs.fire_due(
            session_factory,
            settings.model_copy(update={"operator_emails": [OPERATOR]}),
            dispatch,
            clock=clock,
        )

    try:
        yield fire
    finally:
        publisher.close()


@pytest.fixture
def viewer(auth: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return auth(Role.VIEWER)


# ---------------------------------------------------------------------------- helpers


def declare(
    client: TestClient,
    headers: dict[str, str],
    members: list[dict[str, Any]],
    followup: dict[str, Any],
    **overrides: Any,
) -> dict[str, Any]:
    body = declare_body(
        audience={"member_ids": [m["id"] for m in members]},
        briefing={"en": {"subject": "Subject in en", "body": "Body in en."}},
        followup=followup,
        **overrides,
    )
    response = client.post("/v1/incidents", json=body, headers=headers)
    assert response.status_code == 202, response.text
    incident: dict[str, Any] = response.json()
    return incident


def hooks(receiver: WebhookReceiver, member: dict[str, Any]) -> list[Hit]:
    hits = receiver.hits_for(member["hook_path"])
    assert all(h.verified and h.body is not None for h in hits), hits
    return hits


def hook_kinds(receiver: WebhookReceiver, member: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(webhook type, briefing kind, briefing version) of each webhook, by version."""
    result = []
    for hit in hooks(receiver, member):
        assert hit.body is not None
        briefing = hit.body["data"]["briefing"]
        result.append((hit.body["type"], briefing["kind"], briefing["version"]))
    return sorted(result, key=lambda item: item[2])


def wait_hook(
    receiver: WebhookReceiver, member: dict[str, Any], kind: str, version: int | None = None
) -> Hit:
    """The member's webhook of this briefing kind (and version), once it arrived."""

    def found() -> Hit | None:
        for hit in hooks(receiver, member):
            assert hit.body is not None
            briefing = hit.body["data"]["briefing"]
            if briefing["kind"] == kind and version in (None, briefing["version"]):
                return hit
        return None

    wait_until(lambda: found() is not None, WAIT, f"{member['name']}'s {kind} webhook")
    hit = found()
    assert hit is not None
    return hit


def mails(smtp: SmtpSink, member: dict[str, Any]) -> list[CaughtMail]:
    return sorted(smtp.to(member["email"]), key=lambda m: delivery_id_of(m))


def wait_mails(smtp: SmtpSink, member: dict[str, Any], count: int) -> None:
    wait_until(lambda: len(smtp.to(member["email"])) >= count, WAIT, f"{member['name']}'s emails")


def delivery_id_of(mail: CaughtMail) -> int:
    match = MESSAGE_ID.match(str(mail.message["Message-ID"]))
    assert match, mail.message["Message-ID"]
    return int(match.group(1))


def subjects(smtp: SmtpSink, member: dict[str, Any]) -> list[str]:
    return [str(m.message["Subject"]) for m in mails(smtp, member)]


def answer(client: TestClient, hit: Hit, response: str) -> dict[str, Any]:
    """Answer as the member's newsroom system does: with the token of a webhook it got."""
    assert hit.body is not None
    token = hit.body["data"]["ack"]["token"]
    result = client.post("/v1/acks", json={"token": token, "response": response})
    assert result.status_code == 200, result.text
    receipt: dict[str, Any] = result.json()
    return receipt


@dataclass(frozen=True)
class LedgerRow:
    id: int
    member_id: str
    channel: str
    status: str
    kind: str
    version: int
    last_error: str | None
    created_at: datetime


def ledger(factory: sessionmaker[Session], incident_id: str) -> list[LedgerRow]:
    """The incident's deliveries with the kind and version of their briefing."""
    with factory() as session:
        rows = session.execute(
            select(
                Delivery.id,
                Delivery.member_id,
                Delivery.channel,
                Delivery.status,
                Delivery.last_error,
                Delivery.created_at,
                Briefing.kind,
                Briefing.version,
            )
            .join(Briefing, Briefing.id == Delivery.briefing_id)
            .where(Delivery.incident_id == uuid.UUID(incident_id))
            .order_by(Delivery.id)
        )
        return [
            LedgerRow(
                r.id,
                str(r.member_id),
                r.channel,
                r.status,
                r.kind,
                r.version,
                r.last_error,
                r.created_at,
            )
            for r in rows
        ]


def rows_of(rows: list[LedgerRow], member: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    """(kind, version, channel, status) of a member's rows, in ledger order."""
    return [(r.kind, r.version, r.channel, r.status) for r in rows if r.member_id == member["id"]]


def briefing_kinds(factory: sessionmaker[Session], incident_id: str) -> list[tuple[int, str]]:
    with factory() as session:
        return [
            (version, kind)
            for version, kind in session.execute(
                select(Briefing.version, Briefing.kind)
                .where(Briefing.incident_id == uuid.UUID(incident_id))
                .order_by(Briefing.version)
            )
        ]


@dataclass(frozen=True)
class TimerRow:
    due_at: datetime
    done_at: datetime | None
    outcome: str | None


def timers(factory: sessionmaker[Session], incident_id: str) -> dict[tuple[str, int], TimerRow]:
    with factory() as session:
        rows = session.execute(
            select(IncidentTimer).where(IncidentTimer.incident_id == uuid.UUID(incident_id))
        ).scalars()
        return {(t.kind, t.sequence): TimerRow(t.due_at, t.done_at, t.outcome) for t in rows}


def wait_timer(
    factory: sessionmaker[Session], incident_id: str, kind: str, sequence: int = 1
) -> TimerRow:
    def done() -> bool:
        timer = timers(factory, incident_id).get((kind, sequence))
        return timer is not None and timer.done_at is not None

    wait_until(done, WAIT, f"the {kind} timer #{sequence} fired")
    return timers(factory, incident_id)[(kind, sequence)]


def answered_at(factory: sessionmaker[Session], member: dict[str, Any]) -> datetime:
    with factory() as session:
        moment = session.scalar(
            select(Ack.answered_at).where(Ack.member_id == uuid.UUID(member["id"]))
        )
    assert moment is not None
    return moment


def quotas(client: TestClient, headers: dict[str, str], incident_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/incidents/{incident_id}/quotas", headers=headers)
    assert response.status_code == 200, response.text
    return [
        {k: q[k] for k in ("network", "countries", "answered", "targeted", "met")}
        for q in response.json()
    ]


def targeted(client: TestClient, headers: dict[str, str], incident_id: str) -> int:
    response = client.get(f"/v1/incidents/{incident_id}", headers=headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["targeted"]
    return count


def assert_one_webhook_per_row(
    receiver: WebhookReceiver, rows: list[LedgerRow], member: dict[str, Any]
) -> None:
    """Every webhook row of the member was delivered exactly once, and nothing else was."""
    expected = sorted(
        f"rrmm_dlv_{r.id}"
        for r in rows
        if r.member_id == member["id"] and r.channel == "webhook" and r.status == "sent"
    )
    assert sorted(h.webhook_id for h in hooks(receiver, member)) == expected


def assert_one_mail_per_row(smtp: SmtpSink, rows: list[LedgerRow], member: dict[str, Any]) -> None:
    expected = sorted(
        r.id
        for r in rows
        if r.member_id == member["id"] and r.channel == "email" and r.status == "sent"
    )
    assert [delivery_id_of(m) for m in mails(smtp, member)] == expected


def quiet_now() -> dict[str, str]:
    """Quiet hours (UTC) around the current time: moderate briefings wait for their end."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


def new_roster(
    client: TestClient, headers: dict[str, str], name: str, members: list[dict[str, Any]]
) -> str:
    response = client.post("/v1/rosters", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    roster_id: str = response.json()["id"]
    added = client.post(
        f"/v1/rosters/{roster_id}/members",
        json={"member_ids": [m["id"] for m in members]},
        headers=headers,
    )
    assert added.status_code == 200, added.text
    return roster_id


# ---------------------------------------------------------------------------- reminders


@pytest.mark.usefixtures("worker")
def test_reminders_go_once_per_round_to_members_who_have_not_answered(
    fanout_client, operator, viewer, add_member, smtp, receiver, session_factory
):
    early = add_member(name="Early", languages=["en"])
    late = add_member(name="Late", languages=["en"])
    silent = [add_member(name=f"Silent {n}", languages=["en"]) for n in range(2)]
    members = [early, late, *silent]
    incident = declare(
        fanout_client,
        operator,
        members,
        {"reminders": 2, "reminder_interval_seconds": 3, "ack_deadline_seconds": 60},
    )
    incident_id, reference = incident["id"], incident["reference"]

    # One member answers the declaration before the first round, one answers round 1.
    answer(fanout_client, wait_hook(receiver, early, "declared"), "acknowledged")
    reminded = wait_hook(receiver, late, "reminder", 2)
    wait_mails(smtp, late, 2)
    answer(fanout_client, reminded, "will_engage")

    round_1 = wait_timer(session_factory, incident_id, "reminder", 1)
    round_2 = wait_timer(session_factory, incident_id, "reminder", 2)
    wait_final(fanout_client, viewer, incident_id)
    time.sleep(SETTLE)

    # The test's premise: the answers fell where intended, between the rounds.
    assert round_1.done_at is not None
    assert round_2.done_at is not None
    assert answered_at(session_factory, early) < round_1.done_at, "early answer too slow"
    assert round_1.done_at < answered_at(session_factory, late) < round_2.done_at
    assert round_1.outcome == "reminded 3 members (6 deliveries)"
    assert round_2.outcome == "reminded 2 members (4 deliveries)"

    # Each round is its own briefing version of kind "reminder".
    assert briefing_kinds(session_factory, incident_id) == [
        (1, "declared"),
        (2, "reminder"),
        (3, "reminder"),
    ]
    rows = ledger(session_factory, incident_id)
    assert {r.status for r in rows} == {"sent"}
    assert rows_of(rows, early) == [
        ("declared", 1, "email", "sent"),
        ("declared", 1, "webhook", "sent"),
    ]
    assert sorted(rows_of(rows, late)) == [
        ("declared", 1, "email", "sent"),
        ("declared", 1, "webhook", "sent"),
        ("reminder", 2, "email", "sent"),
        ("reminder", 2, "webhook", "sent"),
    ]
    for member in silent:
        assert sorted(rows_of(rows, member)) == [
            ("declared", 1, "email", "sent"),
            ("declared", 1, "webhook", "sent"),
            ("reminder", 2, "email", "sent"),
            ("reminder", 2, "webhook", "sent"),
            ("reminder", 3, "email", "sent"),
            ("reminder", 3, "webhook", "sent"),
        ]

    # What the members received: each row exactly once, reminders marked as such.
    declared = ("incident.declared", "declared", 1)
    assert hook_kinds(receiver, early) == [declared]
    assert hook_kinds(receiver, late) == [declared, ("incident.reminder", "reminder", 2)]
    for member in silent:
        assert hook_kinds(receiver, member) == [
            declared,
            ("incident.reminder", "reminder", 2),
            ("incident.reminder", "reminder", 3),
        ]
    first = f"[{reference}] Subject in en"
    reminder = f"[{reference}] Reminder: Subject in en"
    assert subjects(smtp, early) == [first]
    assert subjects(smtp, late) == [first, reminder]
    for member in silent:
        assert subjects(smtp, member) == [first, reminder, reminder]
    for member in members:
        assert_one_webhook_per_row(receiver, rows, member)
        assert_one_mail_per_row(smtp, rows, member)


# ---------------------------------------------------------------------------- quotas, escalation


@pytest.mark.usefixtures("worker")
def test_met_quota_stops_its_segment_while_others_are_reminded_and_escalated(
    fanout_client, operator, viewer, add_member, smtp, receiver, session_factory
):
    editor_ma = add_member(name="Editor MA", network="editors", country="MA", languages=["en"])
    editor_tn = add_member(name="Editor TN", network="editors", country="TN", languages=["en"])
    editor_ma_silent = add_member(
        name="Editor MA silent", network="editors", country="MA", languages=["en"]
    )
    editor_dz = add_member(name="Editor DZ", network="editors", country="DZ", languages=["en"])
    personality_ma = add_member(
        name="Personality MA", network="personalities", country="MA", languages=["en"]
    )
    first_tier = [editor_ma, editor_tn, editor_ma_silent, editor_dz, personality_ma]
    # The second tier: one editor in the quota's segment, two outside it, and a member
    # already targeted by the first tier.
    second_editor_tn = add_member(
        name="Second editor TN", network="editors", country="TN", languages=["en"]
    )
    second_personality = add_member(
        name="Second personality", network="personalities", country="TN", languages=["en"]
    )
    second_editor_dz = add_member(
        name="Second editor DZ", network="editors", country="DZ", languages=["en"]
    )
    roster = new_roster(
        fanout_client,
        operator,
        "Second tier",
        [second_editor_tn, second_personality, second_editor_dz, personality_ma],
    )
    segment = {"network": "editors", "countries": ["MA", "TN"], "responses": ["will_engage"]}
    incident = declare(
        fanout_client,
        operator,
        first_tier,
        {
            "reminders": 2,
            "reminder_interval_seconds": 3,
            "ack_deadline_seconds": 60,
            "escalation_rosters": [roster],
            "quotas": [{**segment, "min": 2}, {"network": "personalities", "min": 1}],
        },
    )
    incident_id = incident["id"]
    assert incident["targeted"] == 5

    answer(fanout_client, wait_hook(receiver, editor_ma, "declared"), "will_engage")
    assert quotas(fanout_client, viewer, incident_id) == [
        {
            "network": "editors",
            "countries": ["MA", "TN"],
            "answered": 1,
            "targeted": 3,
            "met": False,
        },
        {"network": "personalities", "countries": [], "answered": 0, "targeted": 1, "met": False},
    ]
    # The second editor of the segment answers round 1: the quota is met.
    reminded = wait_hook(receiver, editor_tn, "reminder", 2)
    wait_mails(smtp, editor_tn, 2)
    answer(fanout_client, reminded, "will_engage")
    assert quotas(fanout_client, viewer, incident_id)[0] == {
        "network": "editors",
        "countries": ["MA", "TN"],
        "answered": 2,
        "targeted": 3,
        "met": True,
    }

    round_1 = wait_timer(session_factory, incident_id, "reminder", 1)
    round_2 = wait_timer(session_factory, incident_id, "reminder", 2)
    escalation = wait_timer(session_factory, incident_id, "escalation")
    wait_final(fanout_client, viewer, incident_id)
    time.sleep(SETTLE)

    assert round_1.done_at is not None
    assert round_2.done_at is not None
    assert round_1.done_at < answered_at(session_factory, editor_tn) < round_2.done_at
    assert round_1.outcome == "reminded 4 members (8 deliveries)"
    assert round_2.outcome == "reminded 2 members (4 deliveries)"  # Editor DZ, Personality MA
    assert escalation.outcome == "escalated to 2 members (4 deliveries)"
    assert round_2.due_at < escalation.due_at

    declared = ("incident.declared", "declared", 1)
    round_1_hook = ("incident.reminder", "reminder", 2)
    round_2_hook = ("incident.reminder", "reminder", 3)
    escalated = ("incident.declared", "escalated", 4)
    assert hook_kinds(receiver, editor_ma) == [declared]
    assert hook_kinds(receiver, editor_tn) == [declared, round_1_hook]
    # In the met segment: reminded while the quota was open, not once it was met.
    assert hook_kinds(receiver, editor_ma_silent) == [declared, round_1_hook]
    # Outside it: every round (and no escalation for a member already targeted).
    assert hook_kinds(receiver, editor_dz) == [declared, round_1_hook, round_2_hook]
    assert hook_kinds(receiver, personality_ma) == [declared, round_1_hook, round_2_hook]
    # The second tier: briefed for the first time, except the editor of the met segment.
    assert hook_kinds(receiver, second_personality) == [escalated]
    assert hook_kinds(receiver, second_editor_dz) == [escalated]
    assert hook_kinds(receiver, second_editor_tn) == []
    assert smtp.to(second_editor_tn["email"]) == []
    for member in (second_personality, second_editor_dz):
        assert subjects(smtp, member) == [f"[{incident['reference']}] Subject in en"]

    assert briefing_kinds(session_factory, incident_id) == [
        (1, "declared"),
        (2, "reminder"),
        (3, "reminder"),
        (4, "escalated"),
    ]
    rows = ledger(session_factory, incident_id)
    assert sorted((r.member_id, r.channel) for r in rows if r.kind == "escalated") == sorted(
        (m["id"], channel)
        for m in (second_personality, second_editor_dz)
        for channel in ("email", "webhook")
    )
    assert rows_of(rows, second_editor_tn) == []
    for member in [*first_tier, second_personality, second_editor_dz]:
        assert_one_webhook_per_row(receiver, rows, member)
        assert_one_mail_per_row(smtp, rows, member)

    # The escalated members are targeted now; the met segment did not grow.
    assert targeted(fanout_client, viewer, incident_id) == 7
    assert quotas(fanout_client, viewer, incident_id) == [
        {
            "network": "editors",
            "countries": ["MA", "TN"],
            "answered": 2,
            "targeted": 3,
            "met": True,
        },
        {"network": "personalities", "countries": [], "answered": 0, "targeted": 2, "met": False},
    ]


# ---------------------------------------------------------------------------- deadline


@pytest.mark.usefixtures("worker")
def test_operators_hear_of_unmet_quotas_at_the_deadline_and_only_then(
    fanout_client, operator, viewer, add_member, smtp, receiver, session_factory
):
    covered = [
        add_member(name=f"Covered {n}", network="editors", languages=["en"]) for n in range(2)
    ]
    editor = add_member(name="Editor", network="editors", country="MA", languages=["en"])
    personality = add_member(
        name="Personality", network="personalities", country="TN", languages=["fr", "en"]
    )
    followup = {"reminders": 0, "reminder_interval_seconds": 1, "ack_deadline_seconds": 6}
    met = declare(
        fanout_client,
        operator,
        covered,
        {
            **followup,
            "notify_emails": ["desk-met@example.org"],
            "quotas": [{"network": "editors", "min": 1}],
        },
    )
    unmet = declare(
        fanout_client,
        operator,
        [editor, personality],
        {
            **followup,
            "notify_emails": ["desk@example.org", OPERATOR],
            "quotas": [
                {"network": "editors", "min": 1},
                {
                    "network": "personalities",
                    "countries": ["TN"],
                    "languages": ["fr"],
                    "responses": ["will_engage", "acknowledged"],
                    "min": 1,
                },
            ],
        },
    )
    answer(fanout_client, wait_hook(receiver, covered[0], "declared"), "will_engage")
    answer(fanout_client, wait_hook(receiver, editor, "declared"), "will_engage")
    answer(fanout_client, wait_hook(receiver, personality, "declared"), "unavailable")

    assert [q["met"] for q in quotas(fanout_client, viewer, met["id"])] == [True]
    assert [q["met"] for q in quotas(fanout_client, viewer, unmet["id"])] == [True, False]

    met_deadline = wait_timer(session_factory, met["id"], "deadline")
    unmet_deadline = wait_timer(session_factory, unmet["id"], "deadline")
    wait_until(lambda: smtp.to(OPERATOR), WAIT, "the operators' notice")
    time.sleep(SETTLE)

    assert met_deadline.outcome == "deadline passed, every quota met"
    # Decided at the deadline, sent by the worker after that commit (the outbox).
    assert unmet_deadline.outcome == "deadline passed, 1 quota(s) unmet: operators' notice queued"
    assert answered_at(session_factory, covered[0]) < met_deadline.due_at
    for member in (editor, personality):
        assert answered_at(session_factory, member) < unmet_deadline.due_at

    # One notice, to the configured operators and the incident's own addresses (once each).
    notices = smtp.to(OPERATOR)
    assert len(notices) == 1
    notice = notices[0]
    assert sorted(r.lower() for r in notice.recipients) == ["desk@example.org", OPERATOR]
    assert smtp.to("desk-met@example.org") == []
    subject = str(notice.message["Subject"])
    assert subject == f"[{unmet['reference']}] Acknowledgement deadline passed: quotas unmet"
    assert met["reference"] not in subject
    text = notice.message.get_body(("plain",)).get_content()
    assert unmet["reference"] in text
    assert "personalities, TN, fr: 0 of 1 (will_engage/acknowledged), 1 targeted" in text
    assert "editors" not in text  # the met quota is not reported
    # Nothing else went out: no reminders (none declared), no escalation.
    for incident in (met, unmet):
        assert {kind for _, kind in briefing_kinds(session_factory, incident["id"])} == {"declared"}


# ---------------------------------------------------------------------------- end of incident


@pytest.mark.usefixtures("worker")
def test_resolve_and_cancel_stop_every_reminder_and_the_other_timers(
    fanout_client, operator, viewer, add_member, smtp, receiver, session_factory, fire_timers
):
    def pair(label: str) -> tuple[dict[str, Any], dict[str, Any]]:
        awake = add_member(name=f"Awake {label}", languages=["en"], timezone="UTC")
        asleep = add_member(
            name=f"Asleep {label}", languages=["en"], timezone="UTC", quiet_hours=quiet_now()
        )
        return awake, asleep

    second_tier = add_member(name="Second tier", languages=["en"])
    roster = new_roster(fanout_client, operator, "Second tier", [second_tier])
    # Long clocks that beat never reaches during the test: the test's clock fires them.
    followup = {
        "reminders": 2,
        "reminder_interval_seconds": 600,
        "ack_deadline_seconds": 3600,
        "escalation_rosters": [roster],
        "quotas": [{"min": 1}],
    }
    clock = ManualClock()
    incidents = {}
    members = {}
    for end in ("resolve", "cancel"):
        members[end] = pair(end)
        incidents[end] = declare(
            fanout_client, operator, list(members[end]), followup, severity="moderate"
        )

    clock.advance(601)
    assert fire_timers(clock) == 2  # round 1 of each incident, nothing else due yet
    # Round 1 went out (the sleeping member's rows wait for the end of quiet hours).
    for end in ("resolve", "cancel"):
        awake, asleep = members[end]
        wait_hook(receiver, awake, "reminder", 2)
        wait_mails(smtp, awake, 2)
        rows = ledger(session_factory, incidents[end]["id"])
        assert sorted(rows_of(rows, asleep)) == [
            ("declared", 1, "email", "pending"),
            ("declared", 1, "webhook", "pending"),
            ("reminder", 2, "email", "pending"),
            ("reminder", 2, "webhook", "pending"),
        ]
    ended_at = {}
    for end in ("resolve", "cancel"):
        response = fanout_client.post(
            f"/v1/incidents/{incidents[end]['id']}/{end}", headers=operator
        )
        assert response.status_code == 202, response.text
        ended_at[end] = utcnow()

    clock.advance(3600)
    assert fire_timers(clock) == 6  # round 2, the escalation and the deadline of each
    for end in ("resolve", "cancel"):
        wait_final(fanout_client, viewer, incidents[end]["id"])
    time.sleep(SETTLE)

    for end, kind in (("resolve", "resolved"), ("cancel", "cancelled")):
        incident_id = incidents[end]["id"]
        awake, asleep = members[end]
        assert briefing_kinds(session_factory, incident_id) == [
            (1, "declared"),
            (2, "reminder"),
            (3, kind),
        ]
        fired = timers(session_factory, incident_id)
        assert fired[("reminder", 1)].outcome == "reminded 2 members (4 deliveries)"
        for later in (("reminder", 2), ("escalation", 1), ("deadline", 1)):
            timer = fired[later]
            assert timer.done_at is not None, later
            assert timer.done_at > ended_at[end], later
            assert timer.outcome == "incident ended", later
        rows = ledger(session_factory, incident_id)
        assert not [r for r in rows if r.kind == "reminder" and r.created_at > ended_at[end]]
        # The unsent rows (declaration and reminder) ended cancelled, never to be sent.
        assert sorted(rows_of(rows, asleep)) == [
            ("declared", 1, "email", "cancelled"),
            ("declared", 1, "webhook", "cancelled"),
            ("reminder", 2, "email", "cancelled"),
            ("reminder", 2, "webhook", "cancelled"),
        ]
        assert {r.last_error for r in rows if r.member_id == asleep["id"]} == {f"incident {kind}"}
        assert hooks(receiver, asleep) == []
        assert smtp.to(asleep["email"]) == []
        # The awake member: the declaration, round 1, then the notice; nothing after.
        assert hook_kinds(receiver, awake) == [
            ("incident.declared", "declared", 1),
            ("incident.reminder", "reminder", 2),
            (f"incident.{kind}", kind, 3),
        ]
        assert_one_webhook_per_row(receiver, rows, awake)
        assert_one_mail_per_row(smtp, rows, awake)
    assert hooks(receiver, second_tier) == []
    assert smtp.to(second_tier["email"]) == []
    assert smtp.to(OPERATOR) == []


# ---------------------------------------------------------------------------- restart


def test_a_worker_restarted_after_missed_rounds_gets_each_overdue_timer_once(
    fanout_client,
    operator,
    viewer,
    add_member,
    worker,
    worker_env,
    smtp,
    receiver,
    session_factory,
    fire_timers,
):
    silent = [add_member(name=f"Silent {n}", languages=["en"]) for n in range(2)]
    answers_round_1 = add_member(name="Answers round 1", languages=["en"])
    members = [*silent, answers_round_1]
    clock = ManualClock()
    incident = declare(
        fanout_client,
        operator,
        members,
        {
            "reminders": 2,
            "reminder_interval_seconds": 600,
            "ack_deadline_seconds": 1500,
            "quotas": [{"min": 3}],
        },
    )
    incident_id = incident["id"]
    wait_final(fanout_client, viewer, incident_id)
    clock.advance(601)
    assert fire_timers(clock) == 1
    wait_final(fanout_client, viewer, incident_id)
    answer(fanout_client, wait_hook(receiver, answers_round_1, "reminder", 2), "will_engage")

    worker.kill()  # SIGKILL between the rounds: no goodbye
    # Past round 2 and the deadline: both are overdue, nobody has fired them.
    clock.advance(1000)
    late = timers(session_factory, incident_id)
    assert late[("reminder", 2)].done_at is None
    assert late[("deadline", 1)].done_at is None

    restarted_at = utcnow()
    successor = start_worker(worker_env)
    try:
        # However many sweeps run once the worker is back, each overdue timer fires once.
        assert fire_timers(clock) == 2
        assert fire_timers(clock) == 0
        round_2 = timers(session_factory, incident_id)[("reminder", 2)]
        deadline = timers(session_factory, incident_id)[("deadline", 1)]
        wait_final(fanout_client, viewer, incident_id)
        wait_until(lambda: smtp.to(OPERATOR), WAIT, "the operators' notice")
        time.sleep(SETTLE)
    finally:
        successor.stop()

    assert round_2.done_at is not None
    assert round_2.done_at > restarted_at
    assert round_2.outcome == "reminded 2 members (4 deliveries)"
    assert deadline.done_at is not None
    assert deadline.done_at > restarted_at
    assert deadline.outcome == "deadline passed, 1 quota(s) unmet: operators' notice queued"
    assert len(smtp.to(OPERATOR)) == 1

    assert briefing_kinds(session_factory, incident_id) == [
        (1, "declared"),
        (2, "reminder"),
        (3, "reminder"),
    ]
    rows = ledger(session_factory, incident_id)
    assert {r.status for r in rows} == {"sent"}
    declared = ("incident.declared", "declared", 1)
    for member in silent:
        assert hook_kinds(receiver, member) == [
            declared,
            ("incident.reminder", "reminder", 2),
            ("incident.reminder", "reminder", 3),
        ]
        assert len(rows_of(rows, member)) == 6
    assert hook_kinds(receiver, answers_round_1) == [declared, ("incident.reminder", "reminder", 2)]
    for member in members:
        assert_one_webhook_per_row(receiver, rows, member)
        assert_one_mail_per_row(smtp, rows, member)
