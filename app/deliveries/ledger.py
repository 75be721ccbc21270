"""The delivery ledger's state changes, and the counters that follow them.

Every change of status goes through `transition`, a compare-and-set `UPDATE … WHERE status
= :from RETURNING …`, so the counters move by exactly the rows that changed, on
PostgreSQL and SQLite alike, however many workers race for the same rows.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, or_, select, tuple_, update
from sqlalchemy.orm import Session

from app import counters
from app.models import Delivery, DeliveryCounter
from app.models.base import utcnow

PENDING, SENDING, SENT, RETRYING, FAILED, SKIPPED, CANCELLED = (
    "pending", "sending", "sent", "retrying", "failed", "skipped", "cancelled",
)  # fmt: skip
FINAL_STATUSES = frozenset({SENT, FAILED, SKIPPED, CANCELLED})
OPEN_STATUSES = frozenset({PENDING, SENDING, RETRYING})
_CHUNK = 500


@dataclass(frozen=True)
class Changed:
    """A row that a transition changed, as it is after the change."""

    id: int
    incident_id: uuid.UUID
    channel: str
    attempts: int


def bump_counters(session: Session, deltas: Counter[tuple[uuid.UUID, str, str]]) -> None:
    """Apply (incident, channel, status) → delta to the counters, as upserts."""
    now = utcnow()
    rows = [
        {"incident_id": i, "channel": c, "status": s, "count": d, "updated_at": now}
        for (i, c, s), d in deltas.items()
        if d
    ]
    counters.add(
        session, DeliveryCounter, rows, keys=("incident_id", "channel", "status"),
        sums=("count",), latest=("updated_at",),
    )  # fmt: skip


def count_new(session: Session, rows: Iterable[tuple[uuid.UUID, str, str]]) -> None:
    """Count freshly inserted deliveries: (incident, channel, status) per row."""
    bump_counters(session, Counter(rows))


def transition(
    session: Session,
    *,
    where: ColumnElement[bool],
    from_status: str,
    to_status: str,
    values: dict[str, Any],
    now: datetime,
) -> list[Changed]:
    """Move the rows matching `where` that are in `from_status` to `to_status`."""
    statement = (
        update(Delivery)
        .where(where, Delivery.status == from_status)
        .values(status=to_status, updated_at=now, **values)
        .returning(Delivery.id, Delivery.incident_id, Delivery.channel, Delivery.attempts)
        .execution_options(synchronize_session=False)
    )
    changed = [Changed(*row) for row in session.execute(statement)]
    deltas: Counter[tuple[uuid.UUID, str, str]] = Counter()
    for row in changed:
        deltas[(row.incident_id, row.channel, from_status)] -= 1
        deltas[(row.incident_id, row.channel, to_status)] += 1
    bump_counters(session, deltas)
    return changed


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def claim(
    session: Session, ids: Sequence[int], *, now: datetime, lease: timedelta, max_attempts: int
) -> list[Changed]:
    """Claim the due rows among `ids` for sending: compare-and-set to `sending`, one more
    attempt, a lease. Rows another worker holds (unexpired lease), rows not yet due and
    final rows are left alone, so a task delivered twice sends nothing twice."""
    claimed: list[Changed] = []
    values = {"attempts": Delivery.attempts + 1, "lease_until": now + lease}
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    for chunk in _chunks(ids):
        in_chunk = and_(Delivery.id.in_(chunk), Delivery.attempts < max_attempts)
        claimed += transition(
            session, where=and_(in_chunk, due), from_status=PENDING, to_status=SENDING,
            values=values, now=now,
        )  # fmt: skip
        claimed += transition(
            session, where=and_(in_chunk, due), from_status=RETRYING, to_status=SENDING,
            values=values, now=now,
        )  # fmt: skip
        # A lease that ran out: the worker died or hung mid-send. Take the row over.
        claimed += transition(
            session, where=and_(in_chunk, Delivery.lease_until < now), from_status=SENDING,
            to_status=SENDING, values=values, now=now,
        )  # fmt: skip
    return claimed


def fenced(pairs: Sequence[tuple[int, int]]) -> ColumnElement[bool]:
    """Rows still held by us: same id and same attempt number as when we claimed them."""
    return tuple_(Delivery.id, Delivery.attempts).in_(pairs)


def mark_sent(session: Session, pairs: Sequence[tuple[int, int]], *, now: datetime) -> int:
    changed = 0
    for start in range(0, len(pairs), _CHUNK):
        changed += len(
            transition(
                session, where=fenced(pairs[start : start + _CHUNK]), from_status=SENDING,
                to_status=SENT,
                values={"sent_at": now, "lease_until": None, "last_error": None},
                now=now,
            )
        )  # fmt: skip
    return changed


def finish_one(
    session: Session,
    *,
    delivery_id: int,
    attempt: int,
    to_status: str,
    now: datetime,
    error: str | None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Write one non-success outcome under our lease. False if the lease was lost."""
    values: dict[str, Any] = {"lease_until": None, "last_error": error}
    if to_status == RETRYING:
        values.update(next_attempt_at=next_attempt_at, enqueued_at=None)
    changed = transition(
        session, where=fenced([(delivery_id, attempt)]), from_status=SENDING,
        to_status=to_status, values=values, now=now,
    )  # fmt: skip
    return bool(changed)


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base·2^(attempt-1), never above cap."""
    delay: float = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


def take_due(
    session: Session,
    *,
    now: datetime,
    requeue_after: timedelta,
    limit: int,
    briefing_id: int | None = None,
) -> list[Row[tuple[int, str, int]]]:
    """Mark as queued, and return as (id, channel, briefing id), the rows a sender should
    look at now: new or forgotten pending rows, retries that are due, and rows whose lease
    ran out.

    One conditional UPDATE: if a sweep and a dispatch race for the same rows, the second
    re-checks the condition on the locked rows and takes none of them, so nothing is queued
    twice while its message is plausibly still in the broker.
    """
    not_recently_queued = or_(
        Delivery.enqueued_at.is_(None), Delivery.enqueued_at < now - requeue_after
    )
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    condition = or_(
        and_(Delivery.status.in_((PENDING, RETRYING)), due, not_recently_queued),
        and_(Delivery.status == SENDING, Delivery.lease_until < now, not_recently_queued),
    )
    candidates = select(Delivery.id).where(condition)
    if briefing_id is not None:
        candidates = candidates.where(Delivery.briefing_id == briefing_id)
    candidates = candidates.order_by(Delivery.id).limit(limit)
    statement = (
        update(Delivery)
        .where(Delivery.id.in_(candidates.scalar_subquery()), condition)
        .values(enqueued_at=now)
        .returning(Delivery.id, Delivery.channel, Delivery.briefing_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.execute(statement), key=lambda row: row.id)


def fail_exhausted_leases(session: Session, *, now: datetime, max_attempts: int) -> int:
    """Rows lost mid-send on their last allowed attempt: no attempt is left to take them
    over, so they end as failed rather than stay `sending` forever."""
    changed = transition(
        session,
        where=and_(Delivery.lease_until < now, Delivery.attempts >= max_attempts),
        from_status=SENDING,
        to_status=FAILED,
        values={"lease_until": None, "last_error": "worker lost during the last attempt"},
        now=now,
    )
    return len(changed)
