"""The deliveries' work that runs its own transactions (the worker's): send a batch of
ledger rows and record each outcome as it comes, and hand due rows to the broker in
batches. What they read and write in one session is app/deliveries/service.py's and
ledger.py's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta

import structlog
from sqlalchemy.orm import Session, sessionmaker

from app import timeline
from app.config import Settings
from app.db import session_scope
from app.deliveries import ledger
from app.deliveries.email import UnsafeHeader
from app.deliveries.recorder import OutcomeRecorder, SentJob, Tally, with_db_retries
from app.deliveries.service import (
    Context,
    Job,
    MessageBuilder,
    Transports,
    load_context,
    load_jobs,
    skip_answered_reminders,
)
from app.deliveries.transport import EmailRequest, SendResult, WebhookRequest
from app.models.base import utcnow
from app.vocabulary import Channel, DeliveryStatus

log = structlog.get_logger(__name__)


Publish = Callable[[list[int]], None]


@dataclass
class BatchReport(Tally):
    """What a batch did: the recorder's tally of outcomes, and what the claim found."""

    claimed: int = 0
    skipped: int = 0


def send_batch(
    session_factory: sessionmaker[Session],
    settings: Settings,
    ids: Sequence[int],
    transports: Transports,
) -> BatchReport:
    """Claim, send and record one batch of deliveries. Safe to run twice for the same ids.

    Outcomes are written as sends finish (see `recorder`), so a worker killed mid-batch
    repeats only what was in flight, and a batch out of time keeps what it did.
    """
    report = BatchReport()

    def claim_and_load() -> tuple[list[Job], Context]:
        now = utcnow()
        with session_scope(session_factory) as session:
            claimed = ledger.claim(
                session,
                list(ids),
                lease=timedelta(seconds=settings.delivery_lease_seconds),
                max_attempts=settings.delivery_max_attempts,
            )
            if not claimed:
                return [], Context()
            jobs = load_jobs(session, claimed)
            context = load_context(session, jobs)
            jobs = skip_answered_reminders(session, jobs, context)
            for job in jobs:
                if job.usable is not None:
                    ledger.finish_one(
                        session,
                        delivery_id=job.delivery_id,
                        attempt=job.attempt,
                        to_status=DeliveryStatus.SKIPPED,
                        now=now,
                        error=job.usable,
                    )
            return jobs, context

    jobs, context = with_db_retries(claim_and_load, what="claim")
    if not jobs:
        return report
    report.claimed = len(jobs)
    report.skipped = sum(job.usable is not None for job in jobs)
    sendable = [job for job in jobs if job.usable is None]
    recorder = OutcomeRecorder(
        session_factory,
        settings,
        [
            SentJob(j.delivery_id, j.attempt, j.briefing_id, j.member_id, j.created_at)
            for j in sendable
        ],
    )
    builder = MessageBuilder(settings, context)
    emails: list[EmailRequest] = []
    webhooks: list[WebhookRequest] = []
    send_time = utcnow()
    for job in sendable:
        try:
            if job.channel == Channel.EMAIL:
                emails.append(builder.email(job))
            else:
                webhooks.append(builder.webhook(job, send_time))
        except (UnsafeHeader, ValueError) as exc:
            recorder.done(SendResult(job.delivery_id, ok=False, error=f"not sendable: {exc}"))
    transports.send(emails, webhooks, recorder, deadline=settings.delivery_batch_deadline_seconds)
    report = BatchReport(claimed=report.claimed, skipped=report.skipped, **asdict(recorder.tally))
    if report.lost:
        log.warning("outcomes_not_written_lease_lost", count=report.lost)
    return report


# Rows taken from the ledger per statement: a sweep or a dispatch of 100,000 rows holds one
# page in memory at a time, and its first batches are on the broker before the last page
# is read.
DISPATCH_PAGE_ROWS = 5_000


def dispatch(
    session_factory: sessionmaker[Session],
    settings: Settings,
    publish: Publish,
    *,
    briefing_id: int | None = None,
    limit: int = 1_000_000,
    page_rows: int = DISPATCH_PAGE_ROWS,
) -> int:
    """Hand every due row (of one briefing, or of all) to `publish`, in per-channel batches,
    one page of the ledger at a time.

    Rows are marked as queued in the database first: if publishing fails, they are picked
    up again by the sweeper after `requeue_after_seconds`.
    """
    now = utcnow()
    queued = 0
    after_id: int | None = None
    while queued < limit:
        page = min(page_rows, limit - queued)
        with session_scope(session_factory) as session:
            rows = ledger.take_due(
                session,
                requeue_after=timedelta(seconds=settings.requeue_after_seconds),
                limit=page,
                briefing_id=briefing_id,
                after_id=after_id,
            )
        if not rows:
            break
        after_id = rows[-1].id
        # Its own short transaction, after the rows are marked: the timeline's lock on the
        # incident row is never held while delivery rows are (lock order).
        with session_scope(session_factory) as session:
            timeline.record_fanout_started(session, [row.briefing_id for row in rows], now)
        # Rows of one member's channels are adjacent, so a batch holds both channels and
        # its SMTP and HTTP exchanges overlap.
        ids = [row.id for row in rows]
        size = settings.delivery_batch_size
        for start in range(0, len(ids), size):
            publish(ids[start : start + size])
        queued += len(rows)
        if len(rows) < page:
            break
    return queued
