"""The operators' notice outbox: decided under the incident's lock, sent after commit.

The deadline timer writes an `operator_notices` row in its own transaction (so the notice
exists exactly when the decision does); the worker's sweep sends due rows afterwards, with
no transaction open during the SMTP conversation, so a hung relay never holds a lock an
answer needs. A send is claimed first (compare-and-set, attempt + 1, lease), attempts are
bounded, retries back off, and the timeline's `operators_notified` event is written only
once the relay has accepted the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from app import timeline
from app.config import Settings
from app.deliveries.email import mail_domain, safe_header_value
from app.deliveries.transport import SmtpSettings, open_smtp
from app.models import OperatorNotice
from app.models.base import utcnow
from app.vocabulary import TimelineEventKind

log = structlog.get_logger(__name__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
MAX_RETRY_DELAY = timedelta(hours=1)


def add_notice(
    session: Session,
    *,
    incident_id: uuid.UUID,
    kind: str,
    sequence: int,
    summary: str,
    recipients: list[str],
    subject: str,
    body: str,
) -> OperatorNotice:
    """Queue a notice in the caller's transaction (the worker sends it after commit)."""
    notice = OperatorNotice(
        incident_id=incident_id,
        kind=kind,
        sequence=sequence,
        summary=summary[:200],
        recipients=recipients,
        subject=subject[:300],
        body=body,
        status=PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(notice)
    session.flush()
    return notice


@dataclass(frozen=True)
class _Claimed:
    id: int
    attempt: int
    incident_id: uuid.UUID
    sequence: int
    summary: str
    recipients: list[str]
    subject: str
    body: str


def _lease(settings: Settings) -> timedelta:
    # Longer than the longest send (connect, EHLO, STARTTLS, AUTH, the transaction).
    return timedelta(seconds=_send_deadline(settings) + 30)


def _send_deadline(settings: Settings) -> float:
    return settings.smtp_timeout_seconds * 4


def _due(now: datetime) -> Any:
    return or_(
        and_(OperatorNotice.status == PENDING, OperatorNotice.next_attempt_at <= now),
        # A sender that died mid-send: its lease ran out, the row is due again.
        and_(OperatorNotice.status == SENDING, OperatorNotice.lease_until < now),
    )


def claim(session: Session, settings: Settings, now: datetime) -> _Claimed | None:
    """Take the oldest due notice: the conditional UPDATE makes sure one sender has it."""
    candidate = session.scalar(
        select(OperatorNotice.id).where(_due(now)).order_by(OperatorNotice.id).limit(1)
    )
    if candidate is None:
        return None
    claimed = session.execute(
        update(OperatorNotice)
        .where(OperatorNotice.id == candidate, _due(now))
        .values(
            status=SENDING, attempts=OperatorNotice.attempts + 1, lease_until=now + _lease(settings)
        )
        .returning(OperatorNotice.attempts)
        .execution_options(synchronize_session=False)
    ).scalar()
    if claimed is None:
        return None  # another sender took it meanwhile
    notice = session.get_one(OperatorNotice, candidate, populate_existing=True)
    return _Claimed(
        id=notice.id,
        attempt=int(claimed),
        incident_id=notice.incident_id,
        sequence=notice.sequence,
        summary=notice.summary,
        recipients=list(notice.recipients),
        subject=notice.subject,
        body=notice.body,
    )


def _message(settings: Settings, claimed: _Claimed) -> EmailMessage:
    message = EmailMessage()
    message["From"] = safe_header_value(settings.mail_from)
    message["To"] = ", ".join(safe_header_value(r) for r in claimed.recipients)
    message["Subject"] = safe_header_value(claimed.subject)
    message["Auto-Submitted"] = "auto-generated"
    # Stable across retries: a relay or a mailbox can drop the duplicate of a resend.
    message["Message-ID"] = f"<rrmm.notice.{claimed.id}@{mail_domain(settings.mail_from)}>"
    message.set_content(claimed.body)
    return message


async def _smtp_send(smtp: SmtpSettings, message: EmailMessage, recipients: list[str]) -> int:
    """Send one message to every recipient; returns how many the relay refused (it raises
    if it refused them all)."""
    client = await open_smtp(smtp)
    try:
        refused, _ = await client.send_message(message, recipients=recipients)
        # The message was accepted: a lost goodbye changes nothing.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
        return len(refused)
    finally:
        client.close()


@dataclass(frozen=True)
class _Outcome:
    sent: bool
    error: str | None = None
    final: bool = False  # no later attempt can do better


def send(settings: Settings, claimed: _Claimed) -> _Outcome:
    """The SMTP conversation, bounded by an overall deadline."""
    try:
        message = _message(settings, claimed)
    except ValueError as exc:  # a CR/LF in an address or the subject: never sendable
        return _Outcome(False, f"unsendable: {exc}", final=True)

    async def bounded() -> int:
        return await asyncio.wait_for(
            _smtp_send(SmtpSettings.from_settings(settings), message, claimed.recipients),
            timeout=_send_deadline(settings),
        )

    try:
        refused = asyncio.run(bounded())
    except TimeoutError:
        return _Outcome(False, "SMTP timeout")
    except aiosmtplib.SMTPResponseException as exc:
        return _Outcome(False, f"SMTP {exc.code}: {_short(exc.message)}")
    except (aiosmtplib.SMTPException, OSError) as exc:
        return _Outcome(False, f"SMTP error ({type(exc).__name__}): {_short(exc)}")
    return _Outcome(True, f"{refused} recipient(s) refused" if refused else None)


def _short(text: object) -> str:
    return str(text).replace("\r", " ").replace("\n", " ")[:160]


def retry_delay(settings: Settings, attempt: int) -> timedelta:
    """Doubling from `operator_notice_retry_seconds`, capped at an hour."""
    seconds = settings.operator_notice_retry_seconds * 2 ** max(attempt - 1, 0)
    return min(timedelta(seconds=seconds), MAX_RETRY_DELAY)


def record(session: Session, settings: Settings, claimed: _Claimed, outcome: _Outcome) -> str:
    """Write the outcome if the claim is still ours; returns the notice's new status."""
    now = utcnow()
    mine = and_(
        OperatorNotice.id == claimed.id,
        OperatorNotice.status == SENDING,
        OperatorNotice.attempts == claimed.attempt,
    )
    error = outcome.error
    if outcome.sent:
        status = SENT
        values: dict[str, Any] = {"sent_at": now, "last_error": error}
    elif outcome.final or claimed.attempt >= settings.operator_notice_max_attempts:
        status, values = FAILED, {"last_error": error}
    else:
        status = PENDING
        values = {
            "last_error": error,
            "next_attempt_at": now + retry_delay(settings, claimed.attempt),
        }
    done = session.execute(
        update(OperatorNotice)
        .where(mine)
        .values(status=status, lease_until=None, **values)
        .returning(OperatorNotice.id)
        .execution_options(synchronize_session=False)
    ).scalar()
    if done is None:
        return "lost"  # the lease ran out and another sender took it
    if outcome.sent:
        timeline.add(
            session,
            claimed.incident_id,
            TimelineEventKind.OPERATORS_NOTIFIED,
            at=now,
            detail={
                "sequence": claimed.sequence,
                "outcome": claimed.summary,
                "attempts": claimed.attempt,
            },
        )
    return status
