"""Transport faults with a real worker and real peers on 127.0.0.1: SMTP servers that refuse
or hang, webhook receivers that fail, go away, throttle, redirect, drip or flood. Each test
checks the final ledger state of every delivery and what the peer actually saw.

Clocks come from `FAST_CLOCKS` (webhook timeout 2 s, SMTP timeout 1.5 s, retry base 0.3 s,
sweep every 0.5 s). The tests with these settings share one worker and one pair of sinks
(emptied before each test); a test that needs other settings gets a worker of its own."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import select

from app.broker import BEAT_QUEUE, SEND_QUEUE
from app.config import Settings
from app.db import session_scope
from app.deliveries.email import UnsafeHeader, safe_header_value
from app.deliveries.transport import SendResult, WebhookRequest, WebhookSender
from app.models import Member, Role
from app.netutil import wait_until
from app.security import SecretBox, new_webhook_secret
from tests.support.factories import assert_problem, briefing, declare_body, wait_final
from tests.support.sinks import CaughtMail, HangingSmtpServer, SmtpSink
from tests.support.timed_receiver import RequestTrap, TimedReceiver
from tests.support.worker import FAST_CLOCKS, WorkerProcess, worker_environment

pytestmark = pytest.mark.slow

WEBHOOK_TIMEOUT = float(FAST_CLOCKS["RRMM_WEBHOOK_TIMEOUT_SECONDS"])
MESSAGE_ID = re.compile(r"^<rrmm\.delivery\.(\d+)@[^<>@\s]+>$")
MSG_ID_TOKEN = re.compile(r"<[^<>\s]+>")


# ---------------------------------------------------------------------------- fixtures


class Workers:
    """One real worker at a time for this module, restarted only when its settings change
    (a worker takes seconds to boot; most tests here share the default settings). Two
    workers never run together, so a test's tasks are taken by the worker it asked for."""

    def __init__(self, settings: Settings, smtp_port: int, base: Path) -> None:
        self.settings = settings
        self.smtp_port = smtp_port
        self.base = base
        self.current: WorkerProcess | None = None
        self.key: tuple[Any, ...] | None = None
        self.started = 0

    def get(self, *, smtp_port: int | None = None, **extra: str) -> WorkerProcess:
        key = (smtp_port or self.smtp_port, tuple(sorted(extra.items())))
        current = self.current
        if current and self.key == key and current.process and current.process.poll() is None:
            return current
        self.stop()
        # Tasks left by earlier tests point at rows that are gone; drop them anyway.
        with Connection(self.settings.broker_url) as connection:
            channel: Any = connection.default_channel
            for queue in (SEND_QUEUE, BEAT_QUEUE):
                channel.queue_purge(queue)
        env = worker_environment(
            self.settings,
            smtp_port=key[0],
            var_dir=self.base / f"worker-{self.started}",
            extra=extra,
        )
        self.started += 1
        self.current, self.key = WorkerProcess(env).start(), key
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
        self.current = self.key = None


@pytest.fixture(scope="module")
def module_sinks() -> Iterator[tuple[SmtpSink, TimedReceiver]]:
    smtp = SmtpSink().start()
    receiver = TimedReceiver().start()
    try:
        yield smtp, receiver
    finally:
        receiver.stop()
        smtp.stop()


@pytest.fixture
def smtp_and_receiver(
    module_sinks: tuple[SmtpSink, TimedReceiver],
) -> tuple[SmtpSink, TimedReceiver]:
    """The module's sinks (a shared worker knows their ports), emptied for each test."""
    smtp, receiver = module_sinks
    with smtp.lock:
        smtp.received.clear()
        smtp.rcpt_script.clear()
    with receiver.lock:
        receiver.hits.clear()
        receiver.arrivals.clear()
        receiver.cut_off.clear()
        receiver.routes.clear()
        receiver.redirect_to.clear()
    return smtp, receiver


@pytest.fixture(scope="module")
def workers(
    settings: Settings,
    module_sinks: tuple[SmtpSink, TimedReceiver],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workers]:
    manager = Workers(settings, module_sinks[0].port, tmp_path_factory.mktemp("workers"))
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def worker(workers: Workers, engine: Any) -> WorkerProcess:  # noqa: ARG001 (requested for its effect: a migrated database)
    """A worker with the default test settings (`FAST_CLOCKS`)."""
    return workers.get()


@pytest.fixture
def trap() -> Iterator[RequestTrap]:
    server = RequestTrap().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hanging_smtp() -> Iterator[HangingSmtpServer]:
    server = HangingSmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- helpers


def wait_ready(worker: WorkerProcess) -> None:
    """For timing assertions: the worker consumes the queue (not still booting)."""
    wait_until(lambda: " ready." in worker.log(), 30, f"worker ready\n{worker.log()[-3000:]}")


def declare(client: Any, operator: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/incidents", json=declare_body(**overrides), headers=operator)
    assert response.status_code == 202, response.text
    incident: dict[str, Any] = response.json()
    return incident


def ledger(client: Any, operator: dict[str, str], incident_id: str) -> list[dict[str, Any]]:
    """Every delivery of the incident, from the operators' API."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        response = client.get(
            f"/v1/incidents/{incident_id}/deliveries", params=params, headers=operator
        )
        assert response.status_code == 200, response.text
        page = response.json()
        rows += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def row_of(
    rows: list[dict[str, Any]], member: dict[str, Any], channel: str, version: int = 1
) -> dict[str, Any]:
    found = [
        r
        for r in rows
        if r["member"]["id"] == member["id"] and r["channel"] == channel and r["version"] == version
    ]
    assert len(found) == 1, (member["id"], channel, version, rows)
    return found[0]


def settle(
    client: Any, operator: dict[str, str], viewer: dict[str, str], incident_id: str
) -> list[dict[str, Any]]:
    wait_final(client, viewer, incident_id)
    return ledger(client, operator, incident_id)


def script_hook(
    receiver: TimedReceiver, member: dict[str, Any], script: list[Any], **kw: Any
) -> str:
    """Give a member's webhook path a script of answers (keeping its signing secret)."""
    path: str = member["hook_path"]
    receiver.route(path, secret=member["webhook_secret"], script=script, **kw)
    return path


def ids_in(header: str | None) -> set[str]:
    return set(MSG_ID_TOKEN.findall(str(header or "")))


def body_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


def header_values(message: EmailMessage) -> str:
    return "\n".join(f"{name}: {value}" for name, value in message.items())


# ---------------------------------------------------------------------------- header safety


@pytest.mark.parametrize("subject", ["Alert\r\nBcc: x@evil.example", "Alert\nBcc: x@evil", "A\x00"])
def test_line_breaks_in_a_briefing_subject_are_refused_at_declaration(
    fanout_client, operator, subject
):
    body = declare_body(briefing={"en": {"subject": subject, "body": "Body."}})
    response = fanout_client.post("/v1/incidents", json=body, headers=operator)
    problem = assert_problem(response, 422, "subject")
    assert any("briefing" in e["field"] for e in problem["errors"]), problem


@pytest.mark.parametrize("value", ["a\r\nBcc: x@evil", "a\rb", "a\nb", "a\x00b"])
def test_safe_header_value_refuses_cr_lf_nul(value):
    with pytest.raises(UnsafeHeader):
        safe_header_value(value)
    assert safe_header_value("Update 2: تحديث — ok") == "Update 2: تحديث — ok"


# ---------------------------------------------------------------------------- SMTP


@pytest.mark.usefixtures("worker")
def test_smtp_4xx_is_retried_once_accepted_and_5xx_is_final(
    fanout_client, auth, add_member, smtp, receiver
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    busy = add_member(languages=["en"])  # 421: service not available (closing)
    later = add_member(languages=["en"])  # 451: try again later
    unknown = add_member(languages=["en"])  # 550: no such user
    fine = add_member(languages=["en"])
    smtp.rcpt_script[busy["email"]] = ["421 4.3.2 busy, closing", None]
    smtp.rcpt_script[later["email"]] = ["451 4.7.1 later", None]
    smtp.rcpt_script[unknown["email"]] = ["550 5.1.1 no such user"]

    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    for member in (busy, later):
        row = row_of(rows, member, "email")
        assert (row["status"], row["attempts"]) == ("sent", 2), row
        assert row["last_error"] is None
        assert len(smtp.to(member["email"])) == 1  # accepted once, delivered once
    refused = row_of(rows, unknown, "email")
    assert (refused["status"], refused["attempts"]) == ("failed", 1), refused
    assert "550" in refused["last_error"]
    assert smtp.to(unknown["email"]) == []
    assert row_of(rows, fine, "email")["attempts"] == 1
    assert len(smtp.to(fine["email"])) == 1
    # The other channel of the same members is not affected.
    for member in (busy, later, unknown, fine):
        assert row_of(rows, member, "webhook")["status"] == "sent"
        assert len(receiver.hits_for(member["hook_path"])) == 1

    # The Message-ID comes from the ledger row, so the retried message has the one the
    # refused attempt had: <rrmm.delivery.{delivery id}@domain>.
    for member in (busy, later, fine):
        (mail,) = smtp.to(member["email"])
        match = MESSAGE_ID.match(mail.message["Message-ID"])
        assert match, mail.message["Message-ID"]
        assert int(match.group(1)) == row_of(rows, member, "email")["id"]


# ---------------------------------------------------------------------------- webhooks


@pytest.mark.usefixtures("worker")
def test_webhook_500_is_retried_with_the_same_webhook_id(fanout_client, auth, add_member, receiver):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    member = add_member(email=False)
    path = script_hook(receiver, member, [500, 200])

    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    row = row_of(rows, member, "webhook")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 2, None)
    first, second = receiver.hits_for(path)
    assert first.verified
    assert second.verified
    assert first.webhook_id == second.webhook_id == f"rrmm_dlv_{row['id']}"
    # The same event both times: same type, briefing and acknowledgement token.
    assert first.body is not None
    assert second.body is not None
    for body in (first.body, second.body):
        assert body["type"] == "incident.declared"
        assert body["data"]["incident"]["id"] == incident["id"]
    assert first.body["data"]["briefing"] == second.body["data"]["briefing"]
    assert first.body["data"]["ack"] == second.body["data"]["ack"]


@pytest.mark.usefixtures("worker")
def test_webhook_410_fails_without_retry_and_disables_the_webhook(
    fanout_client, auth, add_member, receiver, smtp, session_factory
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    gone = add_member(languages=["en"])
    other = add_member(languages=["en"])
    path = script_hook(receiver, gone, [410])

    first = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, first["id"])

    row = row_of(rows, gone, "webhook")
    assert (row["status"], row["attempts"]) == ("failed", 1), row
    assert "410" in row["last_error"]
    assert len(receiver.hits_for(path)) == 1
    assert row_of(rows, gone, "email")["status"] == "sent"
    with session_factory() as session:
        disabled_at = session.scalar(
            select(Member.webhook_disabled_at).where(Member.id == uuid.UUID(gone["id"]))
        )
    assert disabled_at is not None

    # The next incident does not call the disabled webhook again; email still works.
    second = declare(fanout_client, operator, title="A second incident")
    rows = settle(fanout_client, operator, viewer, second["id"])
    webhook_rows = [
        r for r in rows if r["member"]["id"] == gone["id"] and r["channel"] == "webhook"
    ]
    assert all(r["status"] == "skipped" for r in webhook_rows), webhook_rows
    assert row_of(rows, gone, "email")["status"] == "sent"
    assert len(smtp.to(gone["email"])) == 2
    assert len(receiver.hits_for(path)) == 1
    assert row_of(rows, other, "webhook")["status"] == "sent"
    assert len(receiver.hits_for(other["hook_path"])) == 2


@pytest.mark.usefixtures("worker")
def test_webhook_429_honours_retry_after(fanout_client, auth, add_member, receiver):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    member = add_member(email=False)
    path = script_hook(receiver, member, [429, 200], retry_after="2")

    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    row = row_of(rows, member, "webhook")
    assert (row["status"], row["attempts"]) == ("sent", 2), row
    first, second = receiver.arrivals_for(path)
    # The backoff alone would be ≤ 0.3 s (RRMM_RETRY_BASE_SECONDS): this is Retry-After.
    assert second.at - first.at >= 1.9, second.at - first.at
    assert first.webhook_id == second.webhook_id
    assert all(h.verified for h in receiver.hits_for(path))


@pytest.mark.usefixtures("worker")
def test_webhook_redirect_to_an_internal_address_is_not_followed(
    fanout_client, auth, add_member, receiver, trap
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    member = add_member(email=False)
    path = script_hook(receiver, member, ["redirect"])
    receiver.redirect_to[path] = trap.url("/latest/meta-data/iam")

    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    row = row_of(rows, member, "webhook")
    assert (row["status"], row["attempts"]) == ("failed", 1), row
    assert "302" in row["last_error"]
    assert len(receiver.hits_for(path)) == 1
    assert trap.requests == []  # the internal address was never asked anything


def test_webhook_answering_50_mb_counts_as_sent_without_reading_it(
    fanout_client, auth, add_member, worker, receiver
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    member = add_member(email=False)
    path = script_hook(receiver, member, ["huge"])
    wait_ready(worker)

    started = time.monotonic()
    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    assert time.monotonic() - started < 10
    row = row_of(rows, member, "webhook")
    assert (row["status"], row["attempts"]) == ("sent", 1), row
    assert len(receiver.hits_for(path)) == 1
    # The receiver could not push its 50 MB: the worker hung up after a few kilobytes.
    wait_until(lambda: path in receiver.cut_off, 10, "the receiver's answer cut off")


# ---------------------------------------------------------------------------- content


def _messages_by_delivery(smtp: SmtpSink) -> dict[int, CaughtMail]:
    with smtp.lock:
        caught = list(smtp.received)
    by_id = {}
    for mail in caught:
        match = MESSAGE_ID.match(str(mail.message["Message-ID"]))
        assert match, mail.message["Message-ID"]
        by_id[int(match.group(1))] = mail
    assert len(by_id) == len(caught), "two messages with one Message-ID"
    return by_id


def _post(client: Any, url: str, operator: dict[str, str], body: Any = None) -> None:
    response = client.post(url, json=body, headers=operator)
    assert response.status_code == 202, response.text


@pytest.mark.usefixtures("worker")
def test_email_and_webhook_content_across_an_incident_lifecycle(
    fanout_client, auth, add_member, smtp, receiver
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    english = add_member(languages=["en"])
    arabic = add_member(languages=["ar"])
    french = add_member(languages=["fr"])
    members = [english, arabic, french]

    # An exercise: declared, updated, resolved. An actual incident: declared, cancelled.
    exercise = declare(fanout_client, operator, mode="exercise")
    wait_final(fanout_client, viewer, exercise["id"])
    base = f"/v1/incidents/{exercise['id']}"
    _post(fanout_client, f"{base}/updates", operator, {"briefing": briefing(en="", ar="", fr="")})
    wait_final(fanout_client, viewer, exercise["id"])
    _post(fanout_client, f"{base}/resolve", operator)
    exercise_rows = settle(fanout_client, operator, viewer, exercise["id"])
    actual = declare(fanout_client, operator, title="An actual incident")
    wait_final(fanout_client, viewer, actual["id"])
    _post(fanout_client, f"/v1/incidents/{actual['id']}/cancel", operator)
    actual_rows = settle(fanout_client, operator, viewer, actual["id"])

    assert {r["status"] for r in exercise_rows + actual_rows} == {"sent"}
    mails = _messages_by_delivery(smtp)
    assert len(mails) == 3 * 3 + 3 * 2  # one message per email row, no more

    kinds = {
        exercise["id"]: {
            1: ("", "incident.declared"),
            2: ("Update 2:", "incident.updated"),
            3: ("Stand-down:", "incident.resolved"),
        },
        actual["id"]: {1: ("", "incident.declared"), 2: ("Cancelled:", "incident.cancelled")},
    }
    for incident, rows in ((exercise, exercise_rows), (actual, actual_rows)):
        is_exercise = incident is exercise
        for member in members:
            others = [m["email"] for m in members if m is not member]
            language = member["languages"][0]
            for version, (label, event_type) in kinds[incident["id"]].items():
                mail = mails[row_of(rows, member, "email", version)["id"]]
                message = mail.message
                # One recipient, and no other member's address anywhere in the headers.
                assert mail.recipients == [member["email"]]
                assert message["To"] == member["email"]
                headers = header_values(message)
                assert not any(address in headers for address in others), headers
                assert message["Auto-Submitted"] == "auto-generated"
                assert message.get_content_type() == "multipart/alternative"
                parts = [part.get_content_type() for part in message.iter_parts()]
                assert parts == ["text/plain", "text/html"]
                text, html = body_of(message, "plain"), body_of(message, "html")
                assert f'lang="{language}"' in html
                assert ('dir="rtl"' in html) == (language == "ar")
                assert "/ack/" in text
                assert "/ack/" in html
                # Threading headers on every message after the first briefing only.
                assert (message["In-Reply-To"] is None) == (version == 1)
                assert version == 1 or message["References"]
                subject = str(message["Subject"])
                assert incident["reference"] in subject
                assert subject.startswith("[EXERCISE]") == is_exercise, subject
                if is_exercise and language == "en":
                    assert "This is an exercise" in text
                    assert "This is an exercise" in html
                if is_exercise and language == "fr":
                    assert "[EXERCICE]" in subject
                    assert "Ceci est un exercice" in text
                if not is_exercise:
                    assert "exercise" not in text.lower()
                if label and language == "en":
                    assert label in subject, subject
                # The webhook of the same version says which kind of message it is.
                (hit,) = [
                    h
                    for h in receiver.hits_for(member["hook_path"])
                    if h.body is not None
                    and h.body["data"]["incident"]["id"] == incident["id"]
                    and h.body["data"]["briefing"]["version"] == version
                ]
                assert hit.verified
                assert hit.body is not None
                assert hit.body["type"] == event_type


@pytest.mark.usefixtures("worker")
def test_updates_are_threaded_to_the_first_briefing(fanout_client, auth, add_member, smtp):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    members = [add_member(languages=["en"], webhook=False), add_member(languages=["ar"])]
    incident = declare(fanout_client, operator)
    wait_final(fanout_client, viewer, incident["id"])
    base = f"/v1/incidents/{incident['id']}"
    _post(fanout_client, f"{base}/updates", operator, {"briefing": briefing(en="", ar="")})
    wait_final(fanout_client, viewer, incident["id"])
    _post(fanout_client, f"{base}/resolve", operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])
    mails = _messages_by_delivery(smtp)

    for member in members:
        first, *later = [
            mails[row_of(rows, member, "email", version)["id"]].message for version in (1, 2, 3)
        ]
        assert first["In-Reply-To"] is None
        # What a mail client links the first briefing by: its id and its own references.
        first_ids = ids_in(first["Message-ID"]) | ids_in(first["References"])
        for message in later:
            assert message["In-Reply-To"]
            assert message["References"]
            references = ids_in(message["References"])
            assert ids_in(message["In-Reply-To"]) <= references
            # The update replies into the thread the member's first briefing is in: the
            # References chain reaches a message the member actually received.
            assert references & first_ids, (
                "not threaded to the first briefing",
                {"first": (first["Message-ID"], first["References"])},
                {"update": (message["In-Reply-To"], message["References"])},
            )
        # The member's later messages all answer the same message.
        assert len({str(m["In-Reply-To"]) for m in later}) == 1


# ---------------------------------------------------------------------------- own settings
# Each test below needs other settings than the default, hence a worker of its own.


def test_hanging_smtp_fails_email_in_bounded_time_and_never_holds_back_webhooks(
    fanout_client, auth, add_member, workers, hanging_smtp, receiver
):
    smtp_timeout = 3.0
    worker = workers.get(
        smtp_port=hanging_smtp.port,
        RRMM_DELIVERY_MAX_ATTEMPTS="2",
        RRMM_SMTP_TIMEOUT_SECONDS=str(smtp_timeout),
    )
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    members = [add_member(languages=["en"]) for _ in range(3)]
    wait_ready(worker)

    started = time.monotonic()
    incident = declare(fanout_client, operator)

    def webhooks_delivered() -> bool:
        return all(receiver.hits_for(member["hook_path"]) for member in members)

    wait_until(webhooks_delivered, 20, "webhooks delivered", interval=0.1)
    # Delivered before the first SMTP attempt could even time out: not queued behind it.
    # (Their ledger rows are written when the batch ends, at most one SMTP timeout later.)
    assert time.monotonic() - started < smtp_timeout
    for member in members:
        (hit,) = receiver.hits_for(member["hook_path"])
        assert hit.verified

    rows = settle(fanout_client, operator, viewer, incident["id"])
    elapsed = time.monotonic() - started
    # Two attempts of at most one SMTP timeout each, a short backoff and sweeps.
    assert elapsed < 2 * smtp_timeout + 10, elapsed
    for member in members:
        email_row = row_of(rows, member, "email")
        assert (email_row["status"], email_row["attempts"]) == ("failed", 2), email_row
        assert "SMTP" in email_row["last_error"], email_row
        webhook_row = row_of(rows, member, "webhook")
        assert (webhook_row["status"], webhook_row["attempts"]) == ("sent", 1)


def test_webhook_that_drips_its_answer_times_out_is_retried_then_fails(
    fanout_client, auth, add_member, workers, receiver
):
    attempts = 2
    worker = workers.get(RRMM_DELIVERY_MAX_ATTEMPTS=str(attempts))
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    member = add_member(email=False)
    path = script_hook(receiver, member, ["drip"])
    wait_ready(worker)

    started = time.monotonic()
    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])
    elapsed = time.monotonic() - started

    row = row_of(rows, member, "webhook")
    # 200 and then a byte every 0.1 s: the answer never completes, so it is no success.
    assert (row["status"], row["attempts"]) == ("failed", attempts), row
    assert "timeout" in (row["last_error"] or ""), row
    assert len(receiver.hits_for(path)) == attempts
    # Each attempt is cut at the timeout; backoff and sweeps add a few seconds at most.
    assert elapsed < attempts * WEBHOOK_TIMEOUT + 6, elapsed


def test_one_slow_receiver_never_delays_the_others_first_attempt(
    fanout_client, auth, add_member, workers, receiver
):
    timeout = 5.0
    worker = workers.get(RRMM_WEBHOOK_TIMEOUT_SECONDS=str(timeout), RRMM_DELIVERY_MAX_ATTEMPTS="1")
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    slow = add_member(email=False)  # first: the lowest delivery id of the batch
    script_hook(receiver, slow, ["drip"])
    others = [add_member(email=False) for _ in range(19)]
    wait_ready(worker)

    started = time.monotonic()
    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    for member in others:
        (arrival,) = receiver.arrivals_for(member["hook_path"])
        # Hit before the slow receiver's timeout could have run out.
        assert arrival.at - started < timeout, arrival.at - started
        row = row_of(rows, member, "webhook")
        assert (row["status"], row["attempts"]) == ("sent", 1), row
        assert receiver.hits_for(member["hook_path"])[0].verified
    assert len(receiver.hits_for(slow["hook_path"])) == 1
    assert row_of(rows, slow, "webhook")["status"] in {"sent", "failed"}


# ---------------------------------------------------------------------------- addresses


def _send_one(url: str, *, allow_private: bool) -> SendResult:
    """One POST through the real sender (its own event loop, its own connection pool)."""

    async def run() -> SendResult:
        sender = WebhookSender(
            allow_private=allow_private,
            connect_timeout=2,
            total_timeout=5,
            concurrency=4,
            retry_after_cap=60,
        )
        try:
            request = WebhookRequest(delivery_id=1, url=url, body=b"{}", headers={})
            (result,) = await sender.send_all([request])
            return result
        finally:
            await sender.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("template", "address"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1"),  # a literal: no resolver involved
        ("http://１２７.０.０.１:{port}/hook", "127.0.0.1"),  # full-width: yarl makes it a literal
        ("http://[::ffff:127.0.0.1]:{port}/hook", "::ffff:7f00:1"),
        ("http://localhost:{port}/hook", ""),  # a name: refused by the connector's resolver
        ("http://ｌｏｃａｌｈｏｓｔ:{port}/hook", ""),
        ("http://0x7f.0.0.1:{port}/hook", "127.0.0.1"),  # a "name" the system resolves
    ],
)
def test_the_sender_refuses_non_public_addresses_once_and_for_all(trap, template, address):
    url = template.format(port=trap.port)

    result = _send_one(url, allow_private=False)

    assert not result.ok
    assert not result.retryable, result  # the same address next time: no point retrying
    assert result.error is not None
    assert result.error.startswith("webhook address resolves to a non-public address "), result
    assert address in result.error
    assert trap.requests == []
    # The same URL does reach the server when private addresses are allowed: it was the
    # check that stopped it, not a dead address.
    allowed = _send_one(url, allow_private=True)
    assert allowed.ok, allowed
    assert len(trap.requests) == 1


@pytest.mark.parametrize("host", ["2130706433", "127.1"])
def test_legacy_ipv4_spellings_are_final_failures_not_retried(trap, host):
    for allow_private in (False, True):
        result = _send_one(f"http://{host}:{trap.port}/hook", allow_private=allow_private)
        assert not result.ok
        assert not result.retryable, result
        assert result.error is not None
        assert result.error.startswith("invalid webhook URL"), result
    assert trap.requests == []


def test_full_width_loopback_written_past_the_api_fails_after_one_attempt(
    fanout_client, auth, workers, trap, session_factory, settings
):
    """The member row is written straight into the database (as an old row, an import from
    elsewhere or a bug could have left it), so only the send-time check stands between
    the worker and 127.0.0.1."""
    worker = workers.get(RRMM_WEBHOOK_ALLOW_PRIVATE="false")
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    url = f"http://１２７.０.０.１:{trap.port}/latest/meta-data"
    with session_scope(session_factory) as session:
        member = Member(
            network="editors",
            name="Written past the API",
            country="MA",
            languages=["en"],
            themes=["religious-hatred"],
            tags=[],
            email=None,
            webhook_url=url,
            webhook_secret_encrypted=SecretBox(settings.secret).encrypt(new_webhook_secret()),
            timezone="UTC",
            status="active",
            consent_given_at=datetime.now(UTC),
            consent_method="written",
        )
        session.add(member)
        session.flush()
        member_id = str(member.id)
    wait_ready(worker)

    incident = declare(fanout_client, operator)
    rows = settle(fanout_client, operator, viewer, incident["id"])

    row = row_of(rows, {"id": member_id}, "webhook")
    assert (row["status"], row["attempts"]) == ("failed", 1), row
    assert row["last_error"] == "webhook address resolves to a non-public address 127.0.0.1"
    assert trap.requests == []
