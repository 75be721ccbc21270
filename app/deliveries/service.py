"""What a batch of ledger rows is sent with: the claimed rows and their members read in
one session, the messages built from them, and the process's senders (`Transports`).

`jobs.send_batch` is what a worker task runs: claim (commit) → build the messages → send
them all concurrently, writing outcomes under the lease as they finish (`recorder`).
`jobs.dispatch` and the sweep (app/sweep.py) find due rows in the database and hand their
ids to `publish` (the broker is only a doorbell).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.deliveries import ledger
from app.deliveries.content import (
    WEBHOOK_TYPES,
    RenderedBriefing,
    cached_render,
    incident_summary,
    render,
    webhook_timestamp,
)
from app.deliveries.email import (
    EmailTemplate,
    address_member,
    build_template,
    cached_template,
    date_header,
    mail_domain,
    message_id,
    thread_id,
)
from app.deliveries.recorder import OutcomeRecorder
from app.deliveries.tokens import signer_from_settings
from app.deliveries.transport import (
    EmailRequest,
    SmtpSender,
    SmtpSettings,
    WebhookRequest,
    WebhookSender,
)
from app.models import Briefing, CurrentAck, Delivery, Incident, Member
from app.models.base import utcnow
from app.security import SecretBox
from app.vocabulary import BriefingKind, Channel, MemberStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Job:
    """One claimed row with what is needed to address it (read in the claim transaction)."""

    delivery_id: int
    attempt: int
    channel: str
    language: str
    briefing_id: int
    incident_id: uuid.UUID
    created_at: datetime
    member_id: uuid.UUID | None
    email: str | None
    webhook_url: str | None
    webhook_secret: bytes | None
    usable: str | None  # why the row cannot be sent any more, if so


def skip_answered_reminders(session: Session, jobs: list[Job], context: Context) -> list[Job]:
    """A member who answered is never reminded: the answer may have come after the
    reminder rows were written."""
    reminders = [j for j in jobs if context.briefings[j.briefing_id].kind == BriefingKind.REMINDER]
    if not reminders:
        return jobs
    rows = session.execute(
        select(CurrentAck.incident_id, CurrentAck.member_id).where(
            CurrentAck.member_id.in_({j.member_id for j in reminders})
        )
    )
    answered = {(row.incident_id, row.member_id) for row in rows}
    return [
        replace(job, usable="already answered")
        if job.usable is None
        and (job.incident_id, job.member_id) in answered
        and context.briefings[job.briefing_id].kind == BriefingKind.REMINDER
        else job
        for job in jobs
    ]


@dataclass
class Context:
    """Incidents and briefings of a batch, loaded once."""

    incidents: dict[uuid.UUID, Incident] = field(default_factory=dict)
    briefings: dict[int, Briefing] = field(default_factory=dict)
    # (incident, member) → the id of the member's first briefing email: later ones reply to it.
    first_emails: dict[tuple[uuid.UUID, uuid.UUID | None], int] = field(default_factory=dict)


def _reason_unusable(channel: str, member: Any) -> str | None:
    if member is None:
        return "member deleted"
    if member.member_status != MemberStatus.ACTIVE:
        return "member paused"
    if channel == Channel.EMAIL and not member.email:
        return "member has no email address any more"
    if channel == Channel.WEBHOOK:
        if not member.webhook_url or member.webhook_secret is None:
            return "member has no webhook any more"
        if member.webhook_disabled_at is not None:
            return "member's webhook is disabled (410 Gone)"
    return None


def load_jobs(session: Session, claimed: Sequence[ledger.Claimed]) -> list[Job]:
    """The claimed rows with their members' addresses (one query by member)."""
    member_ids = {c.member_id for c in claimed if c.member_id is not None}
    members = {
        row.id: row
        for row in session.execute(
            select(
                Member.id,
                Member.status.label("member_status"),
                Member.email,
                Member.webhook_url,
                Member.webhook_secret_encrypted.label("webhook_secret"),
                Member.webhook_disabled_at,
            ).where(Member.id.in_(member_ids))
        )
    }
    jobs = []
    for row in claimed:
        member = members.get(row.member_id) if row.member_id is not None else None
        jobs.append(
            Job(
                delivery_id=row.id,
                attempt=row.attempts,
                channel=row.channel,
                language=row.language,
                briefing_id=row.briefing_id,
                incident_id=row.incident_id,
                created_at=row.created_at,
                member_id=row.member_id,
                email=member.email if member else None,
                webhook_url=member.webhook_url if member else None,
                webhook_secret=member.webhook_secret if member else None,
                usable=_reason_unusable(row.channel, member),
            )
        )
    return jobs


def load_context(session: Session, jobs: Sequence[Job]) -> Context:
    context = Context()
    incident_ids = {j.incident_id for j in jobs}
    briefing_ids = {j.briefing_id for j in jobs}
    for incident in session.scalars(select(Incident).where(Incident.id.in_(incident_ids))):
        context.incidents[incident.id] = incident
    for briefing in session.scalars(select(Briefing).where(Briefing.id.in_(briefing_ids))):
        context.briefings[briefing.id] = briefing
    later = {
        j.member_id
        for j in jobs
        if j.channel == Channel.EMAIL and context.briefings[j.briefing_id].version > 1
    }
    if later:
        first_emails = (
            select(Delivery.incident_id, Delivery.member_id, func.min(Delivery.id).label("first"))
            .where(
                Delivery.incident_id.in_(incident_ids),
                Delivery.member_id.in_(later),
                Delivery.channel == Channel.EMAIL,
            )
            .group_by(Delivery.incident_id, Delivery.member_id)
        )
        for row in session.execute(first_emails):
            context.first_emails[(row.incident_id, row.member_id)] = row.first
    return context


class MessageBuilder:
    """Addresses each message per member; what all readers of a (briefing version,
    language) share is rendered once per process (`cached_render`, `cached_template`), and
    a webhook body's shared JSON once per batch, the member's link and token spliced in."""

    def __init__(self, settings: Settings, context: Context) -> None:
        self.settings = settings
        self.context = context
        self.box = SecretBox.from_settings(settings)
        self.signer = signer_from_settings(settings)
        self.public_url = settings.public_url.rstrip("/")
        self.domain = mail_domain(settings.mail_from)
        self._rendered: dict[tuple[int, str], tuple[Hashable, RenderedBriefing]] = {}
        self._templates: dict[tuple[int, str], EmailTemplate] = {}
        self._bodies: dict[tuple[int, str, datetime], _WebhookBody] = {}
        # The message's Date: the batch's, as when each batch built its own templates.
        self._date = date_header(utcnow())

    def _render(self, job: Job) -> tuple[Hashable, RenderedBriefing]:
        key = (job.briefing_id, job.language)
        found = self._rendered.get(key)
        if found is None:
            incident = self.context.incidents[job.incident_id]
            briefing = self.context.briefings[job.briefing_id]
            found = self._rendered[key] = cached_render(incident, briefing, job.language)
        return found

    def rendered(self, job: Job) -> RenderedBriefing:
        return self._render(job)[1]

    def ack_token(self, job: Job) -> str:
        """Valid for RRMM_ACK_TOKEN_TTL_DAYS after the later of sending and the incident's
        acknowledgement deadline, so a link never dies while an answer is still wanted."""
        incident = self.context.incidents[job.incident_id]
        start = max(job.created_at, incident.ack_deadline or job.created_at)
        return self.signer.sign(
            job.delivery_id, start + timedelta(days=self.settings.ack_token_ttl_days)
        )

    def email(self, job: Job) -> EmailRequest:
        key = (job.briefing_id, job.language)
        template = self._templates.get(key)
        if template is None:
            render_key, rendered = self._render(job)
            template = self._templates[key] = cached_template(
                rendered, key=render_key, mail_from=self.settings.mail_from
            )
        briefing = self.context.briefings[job.briefing_id]
        assert job.email is not None
        references = [thread_id(str(job.incident_id), self.domain)]
        first = self.context.first_emails.get((job.incident_id, job.member_id))
        if briefing.version > 1 and first is not None and first != job.delivery_id:
            references.append(message_id(first, self.domain))
        message = address_member(
            template,
            date=self._date,
            to=job.email,
            message_id=message_id(job.delivery_id, self.domain),
            ack_url=f"{self.public_url}/ack/{self.ack_token(job)}",
            references=references,
        )
        return EmailRequest(job.delivery_id, template.sender_address, job.email, message)

    def _webhook_body(self, job: Job, now: datetime) -> _WebhookBody:
        key = (job.briefing_id, job.language, now)
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = webhook_event(
                self.context.incidents[job.incident_id],
                self.context.briefings[job.briefing_id],
                self.rendered(job),
                public_url=self.public_url,
                now=now,
            )
        return body

    def webhook(self, job: Job, now: datetime) -> WebhookRequest:
        token = self.ack_token(job)
        body = self._webhook_body(job, now).with_ack(
            page=f"{self.public_url}/ack/{token}", token=token
        )
        assert job.webhook_url is not None
        assert job.webhook_secret is not None
        webhook_id = f"rrmm_dlv_{job.delivery_id}"
        signature = Webhook(self.box.decrypt(job.webhook_secret)).sign(webhook_id, now, body)
        return WebhookRequest(
            job.delivery_id,
            job.webhook_url,
            body.encode(),
            {
                "content-type": "application/json",
                "user-agent": "RRMM-Webhooks/1",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature,
            },
        )


# Compact JSON, as `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`; one
# encoder for every call (building one per call costs more than encoding a short string).
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class _WebhookBody:
    """A webhook event's JSON with everything but the member's acknowledgement page and
    token encoded once; the result is byte for byte what encoding the whole event gives:
    `{"type", "timestamp", "data": {"incident", "briefing", "ack": {"url", "page", "token",
    "deadline", "responses"}}}`."""

    head: str
    tail: str

    @classmethod
    def of(
        cls,
        *,
        type_: str,
        timestamp: str,
        incident: dict[str, Any],
        briefing: dict[str, Any],
        ack_url: str,
        deadline: str | None,
        responses: Any,
    ) -> _WebhookBody:
        head = (
            f'{{"type":{_json(type_)},"timestamp":{_json(timestamp)},'
            f'"data":{{"incident":{_json(incident)},"briefing":{_json(briefing)},'
            f'"ack":{{"url":{_json(ack_url)},"page":'
        )
        tail = f',"deadline":{_json(deadline)},"responses":{_json(responses)}}}}}}}'
        return cls(head, tail)

    def with_ack(self, *, page: str, token: str) -> str:
        return f'{self.head}{_json(page)},"token":{_json(token)}{self.tail}'


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (`auto`: when it is installed), or None for asyncio's own
    (`RRMM_WORKER_EVENT_LOOP`; bench/README.md has what each measured)."""
    if choice == "asyncio":
        return None
    try:
        # uvloop is optional: its absence is found out here, when a loop is chosen.
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def webhook_event(
    incident: Incident,
    briefing: Briefing,
    rendered: RenderedBriefing,
    *,
    public_url: str,
    now: datetime,
) -> _WebhookBody:
    """The webhook body of a version in one language, but for the member's link and token."""
    return _WebhookBody.of(
        type_=WEBHOOK_TYPES[briefing.kind],
        timestamp=webhook_timestamp(now),
        incident=incident_summary(incident),
        briefing={**rendered.webhook_briefing, "kind": briefing.kind},
        ack_url=f"{public_url}/v1/acks",
        deadline=webhook_timestamp(incident.ack_deadline) if incident.ack_deadline else None,
        responses=incident.responses,
    )


def sample_messages(
    settings: Settings, incident: Incident, briefing: Briefing, language: str, *, token: str
) -> tuple[RenderedBriefing, bytes, str]:
    """What a member reading `language` gets, built by the same functions as a send: the
    rendering, the complete email (to a stand-in address, the first version's threading)
    and the webhook body, with `token` standing for the member's acknowledgement token."""
    public_url = settings.public_url.rstrip("/")
    domain = mail_domain(settings.mail_from)
    rendered = render(incident, briefing, language)
    email = address_member(
        build_template(rendered, mail_from=settings.mail_from),
        date=date_header(utcnow()),
        to="member@example.invalid",
        message_id=message_id(0, domain),
        ack_url=f"{public_url}/ack/{token}",
        references=[thread_id(str(incident.id), domain)],
    )
    webhook = webhook_event(
        incident, briefing, rendered, public_url=public_url, now=utcnow()
    ).with_ack(page=f"{public_url}/ack/{token}", token=token)
    return rendered, email, webhook


class Transports:
    """The process's senders and the event loop they live on, kept from one batch to the
    next so that HTTP and SMTP connections are reused (built after any fork)."""

    def __init__(self, settings: Settings) -> None:
        self.runner = asyncio.Runner(loop_factory=event_loop_factory(settings.worker_event_loop))
        self.webhooks = WebhookSender(
            allow_private=settings.webhook_allow_private,
            connect_timeout=settings.webhook_connect_timeout_seconds,
            total_timeout=settings.webhook_timeout_seconds,
            concurrency=settings.webhook_concurrency,
            retry_after_cap=settings.retry_after_cap_seconds,
        )
        self.smtp = SmtpSender(SmtpSettings.from_settings(settings))

    def send(
        self,
        emails: list[EmailRequest],
        webhooks: list[WebhookRequest],
        recorder: OutcomeRecorder,
        *,
        deadline: float,
    ) -> None:
        """Send both channels concurrently while `recorder` writes outcomes as they come;
        past the deadline, what has not finished is handed back for a retry."""

        async def both() -> None:
            await asyncio.gather(
                self.smtp.send_all(emails, recorder.done, recorder.wanted),
                self.webhooks.send_all(webhooks, recorder.done, recorder.wanted),
            )

        async def send_and_record() -> None:
            recording = asyncio.create_task(recorder.run())
            try:
                await asyncio.wait_for(both(), timeout=deadline)
            except TimeoutError:
                log.warning("batch_deadline_exceeded", seconds=deadline)
            finally:
                recorder.stop()
                await recording
            await recorder.finish()

        self.runner.run(send_and_record())

    def close(self) -> None:
        async def close_all() -> None:
            await self.webhooks.close()
            await self.smtp.close()

        self.runner.run(close_all())
        self.runner.close()
