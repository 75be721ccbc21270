"""Writing a batch's outcomes while it is still sending.

A batch that waited for its last send before writing anything would, when its worker is
killed, leave every row `sending` (all re-sent later) and, when it runs out of time, throw
away sends that had already succeeded. The recorder instead writes outcomes in small
chunks as they come (every `outcome_flush_seconds` or `outcome_flush_rows`), renews the
leases of the rows still in flight (so a dead worker's rows are free within one lease),
and learns which versions were cancelled or replaced meanwhile (so their rows that have not
started are not sent). Its database work runs in a thread, one step at a time, beside the
event loop that does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.deliveries import ledger
from app.deliveries.transport import SendResult
from app.models import Member
from app.models.base import utcnow
from app.vocabulary import DeliveryStatus

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Waits between tries of a database step that failed on a lost connection (a restart, a
# failover): about 8 s in all, within the default lease.
DB_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
DEADLINE_EXCEEDED = "batch deadline exceeded"
# How stale the batch's knowledge of cancels and updates may get: a send that starts more
# than this long after a cancel committed is not made.
FENCE_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class SentJob:
    """What the recorder needs of a claimed row."""

    delivery_id: int
    attempt: int
    briefing_id: int
    member_id: uuid.UUID | None
    created_at: datetime


@dataclass
class Tally:
    """Outcomes written by a batch; `stopped`: cancelled or superseded while it ran."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    stopped: int = 0
    lost: int = 0


def is_transient(exc: BaseException) -> bool:
    """A database error worth another try: the connection went away (a server restart, a
    failover, the network) or SQLite stayed locked, as opposed to a bug or a constraint."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    message = str(exc.orig).lower()
    return "no such" not in message and "syntax" not in message


def with_db_retries(step: Callable[[], T], *, what: str) -> T:
    """Run `step` (which opens its own transaction), again after a pause if the database
    connection was lost, at most len(DB_RETRY_DELAYS) more times."""
    for delay in (*DB_RETRY_DELAYS, None):
        try:
            return step()
        except DBAPIError as exc:
            if delay is None or not is_transient(exc):
                raise
            log.warning("database_step_retried", step=what, error=type(exc.orig).__name__)
            time.sleep(delay)
    raise AssertionError("unreachable")


class OutcomeRecorder:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        jobs: Sequence[SentJob],
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.jobs = {job.delivery_id: job for job in jobs}
        self.tally = Tally()
        self._pending: list[SendResult] = []
        self._written: set[int] = set()
        self._stopped_briefings: set[int] = set()
        self._briefing_ids = sorted({job.briefing_id for job in jobs})
        self._wake = asyncio.Event()
        self._stopping = False
        self._lease = timedelta(seconds=settings.delivery_lease_seconds)
        self._renew_every = settings.delivery_lease_seconds / 3

    # Called from the senders, in the event loop.

    def done(self, result: SendResult) -> None:
        self._pending.append(result)
        if len(self._pending) >= self.settings.outcome_flush_rows:
            self._wake.set()

    def wanted(self, delivery_id: int) -> bool:
        """False once the row's version is known to be cancelled or replaced."""
        return self.jobs[delivery_id].briefing_id not in self._stopped_briefings

    # The recorder's own task.

    async def run(self) -> None:
        """Flush and renew until `stop` is called (then `finish`)."""
        renewed_at = checked_at = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.outcome_flush_seconds)
            self._wake.clear()
            now = time.monotonic()
            renew = now - renewed_at >= self._renew_every
            check = now - checked_at >= FENCE_CHECK_SECONDS
            if self._pending or renew or check:
                await self._step(renew=renew, check_fences=check)
                if check:
                    checked_at = time.monotonic()
                if renew:
                    renewed_at = time.monotonic()

    def stop(self) -> None:
        """Let `run` end after the step it is in (never cancel it mid-step: its thread
        would go on writing beside `finish`'s)."""
        self._stopping = True
        self._wake.set()

    async def finish(self) -> None:
        """Write what is left; sends that never finished (the batch's deadline) go back for
        a retry, each counted as one attempt."""
        pending = {r.delivery_id for r in self._pending}
        for delivery_id in self.jobs:
            if delivery_id not in self._written and delivery_id not in pending:
                self._pending.append(
                    SendResult(delivery_id, ok=False, retryable=True, error=DEADLINE_EXCEEDED)
                )
        while self._pending:
            await self._step(renew=False, check_fences=False)

    async def _step(self, *, renew: bool, check_fences: bool) -> None:
        chunk, self._pending = self._pending, []
        in_chunk = {r.delivery_id for r in chunk}
        in_flight = [
            (job.delivery_id, job.attempt)
            for job in self.jobs.values()
            if job.delivery_id not in self._written and job.delivery_id not in in_chunk
        ]
        try:
            stopped = await asyncio.to_thread(
                with_db_retries,
                lambda: self._write(chunk, in_flight if renew else [], check_fences),
                what="record outcomes",
            )
        except DBAPIError as exc:
            # The database stayed away longer than we wait: these rows keep their lease
            # until it runs out, then the sweeper hands them to another try.
            log.error("outcomes_not_written", count=len(chunk), error=type(exc.orig).__name__)
            self._written.update(r.delivery_id for r in chunk)
            self.tally.lost += len(chunk)
            return
        self._written.update(r.delivery_id for r in chunk)
        if stopped is not None:
            self._stopped_briefings |= stopped

    def _write(
        self,
        chunk: Sequence[SendResult],
        in_flight: Sequence[tuple[int, int]],
        check_fences: bool,
    ) -> set[int] | None:
        """One transaction: the chunk's outcomes with their counters (one statement on
        PostgreSQL, which also says which of the batch's versions are no longer wanted;
        see `ledger.record_outcomes`), lease renewals when due, and the webhooks to
        disable. Returns those versions when known."""
        now = utcnow()
        outcomes: list[ledger.Outcome] = []
        disabled: set[uuid.UUID] = set()
        for result in chunk:
            job = self.jobs[result.delivery_id]
            if result.ok:
                outcomes.append(
                    ledger.Outcome(
                        job.delivery_id, job.attempt, job.briefing_id, DeliveryStatus.SENT
                    )
                )
                continue
            # What the row becomes if its version is still wanted; the write itself turns
            # it into `cancelled` / `superseded` if not (never retried after the notice).
            status, retry_in = after_failure(self.settings, job, result, now)
            outcomes.append(
                ledger.Outcome(
                    job.delivery_id, job.attempt, job.briefing_id, status, result.error, retry_in
                )
            )
            if result.disable_webhook and job.member_id is not None:
                disabled.add(job.member_id)
        with session_scope(self.session_factory) as session:
            recorded = ledger.record_outcomes(
                session,
                outcomes,
                briefing_ids=self._briefing_ids,
                now=now,
                want_fates=check_fences or bool(disabled) or any(not r.ok for r in chunk),
            )
            if in_flight:
                ledger.renew(session, in_flight, lease=self._lease)
            if disabled:
                session.execute(
                    update(Member)
                    .where(Member.id.in_(disabled), Member.webhook_disabled_at.is_(None))
                    .values(webhook_disabled_at=now)
                    .execution_options(synchronize_session=False)
                )
        self._count(chunk, recorded.statuses)
        return set(recorded.fates) if recorded.fates or check_fences else None

    def _count(self, chunk: Sequence[SendResult], statuses: dict[int, str]) -> None:
        for result in chunk:
            status = statuses.get(result.delivery_id)
            if status is None:
                self.tally.lost += 1
            elif status == DeliveryStatus.SENT:
                self.tally.sent += 1
            elif status == DeliveryStatus.RETRYING:
                self.tally.retrying += 1
            elif status == DeliveryStatus.FAILED:
                self.tally.failed += 1
            else:
                self.tally.stopped += 1


def after_failure(
    settings: Settings, job: SentJob, result: SendResult, now: datetime
) -> tuple[str, timedelta | None]:
    """`failed`, or `retrying` with the delay before the next attempt."""
    too_old = now - job.created_at > timedelta(seconds=settings.delivery_max_age_seconds)
    if not result.retryable or job.attempt >= settings.delivery_max_attempts or too_old:
        return DeliveryStatus.FAILED, None
    delay = ledger.backoff(
        job.attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
    )
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    return DeliveryStatus.RETRYING, timedelta(seconds=delay)
