"""The incidents' work that runs its own transactions (the worker's and the sweep's):
write a version's remaining targets and ledger rows chunk by chunk, note the fan-outs that
have finished, and fire the due follow-up timers, one transaction each. What each step
writes in one session is targeting.py's, app/timeline.py's and followup.py's."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from app.clock import SYSTEM, Clock
from app.config import Settings
from app.db import begin_immediate, session_scope
from app.incidents import briefings, followup
from app.incidents.targeting import write_chunk
from app.models import (
    Briefing,
    BriefingTargeting,
    Delivery,
    DeliveryCounter,
    Incident,
    IncidentEvent,
    IncidentTimer,
)
from app.models.base import utcnow
from app.timeline import LATENCY_BUCKETS, add_once
from app.vocabulary import OPEN_DELIVERY_STATUSES, TimelineEventKind

log = structlog.get_logger(__name__)

Dispatch = Callable[[int], object]


def advance(
    session_factory: sessionmaker[Session],
    briefing_id: int,
    *,
    chunk_members: int,
    dispatch: Dispatch,
) -> int:
    """Write the version's remaining chunks, each in its own transaction, handing each
    chunk's rows to `dispatch` (by briefing id) as soon as it is committed. Returns the
    chunks written. Safe to run twice at once: the incident's row lock orders them."""
    chunks = 0
    while True:
        with session_scope(session_factory) as session:
            begin_immediate(session)
            job = session.get(BriefingTargeting, briefing_id)
            if job is None or job.finished_at is not None:
                return chunks
            # The incident row first (lock order), then the job's, re-read under it.
            incident = session.get(Incident, job.incident_id, with_for_update=True)
            session.refresh(job, with_for_update=True)
            briefing = session.get(Briefing, briefing_id)
            if incident is None or briefing is None or job.finished_at is not None:
                return chunks
            write_chunk(session, incident, briefing, job, chunk_members=chunk_members, now=utcnow())
            finished = job.finished_at is not None
        chunks += 1
        dispatch(briefing_id)
        if finished:
            return chunks


def _unfinished_fanouts(session: Session) -> list[tuple[uuid.UUID, int, datetime]]:
    """(incident, version, start) of every fan-out started and not yet finished."""
    started = aliased(IncidentEvent)
    finished = aliased(IncidentEvent)
    query = (
        select(started.incident_id, started.briefing_version, started.at)
        .outerjoin(
            finished,
            (finished.incident_id == started.incident_id)
            & (finished.kind == TimelineEventKind.FANOUT_FINISHED)
            & (finished.briefing_version == started.briefing_version),
        )
        .where(started.kind == TimelineEventKind.FANOUT_STARTED, finished.id.is_(None))
    )
    return [(row[0], row[1] or 0, row[2]) for row in session.execute(query)]


def _latency_buckets(latencies: Sequence[float]) -> list[int]:
    """Cumulative counts per `LATENCY_BUCKETS` bound (Prometheus' `le` convention)."""
    return [sum(1 for value in latencies if value <= bound) for bound in LATENCY_BUCKETS]


def _still_targeting(session: Session, briefing_id: int) -> bool:
    """Rows are still being written for this version: its fan-out has not finished."""
    return (
        session.scalar(
            select(BriefingTargeting.briefing_id).where(
                BriefingTargeting.briefing_id == briefing_id,
                BriefingTargeting.finished_at.is_(None),
            )
        )
        is not None
    )


def record_finished_fanouts(session_factory: Any) -> int:
    """Called by the sweep: a fan-out whose briefing version has no row left to send is
    finished; its event carries the outcome counts and the delivery-latency histogram.

    While an incident has any row open, its delivery counters say so and its fan-outs are
    not looked at (no scan of the ledger at every sweep). A row that is final stays final,
    so an incident with none open has every started fan-out finished; the event's time is
    its last row's, however late the sweep notices. Each is written in its own transaction.
    """
    with session_scope(session_factory) as session:
        candidates = _unfinished_fanouts(session)
        if not candidates:
            return 0
        busy = set(
            session.scalars(
                select(DeliveryCounter.incident_id)
                .where(
                    DeliveryCounter.incident_id.in_({c[0] for c in candidates}),
                    DeliveryCounter.status.in_(sorted(OPEN_DELIVERY_STATUSES)),
                    DeliveryCounter.count > 0,
                )
                .distinct()
            )
        )
    finished = 0
    for incident_id, version, started_at in candidates:
        if incident_id in busy:
            continue
        with session_scope(session_factory) as session:
            briefing = session.scalar(
                select(Briefing).where(
                    Briefing.incident_id == incident_id, Briefing.version == version
                )
            )
            if briefing is None or _still_targeting(session, briefing.id):
                continue
            outcomes: dict[str, int] = {}
            latencies: list[float] = []
            last_change = started_at
            for status, sent_at, updated_at in session.execute(
                select(Delivery.status, Delivery.sent_at, Delivery.updated_at).where(
                    Delivery.briefing_id == briefing.id
                )
            ):
                outcomes[status] = outcomes.get(status, 0) + 1
                last_change = max(last_change, updated_at)
                if sent_at is not None:
                    latencies.append(max((sent_at - briefing.created_at).total_seconds(), 0.0))
            finished += add_once(
                session,
                incident_id,
                TimelineEventKind.FANOUT_FINISHED,
                f"{TimelineEventKind.FANOUT_FINISHED}:{version}",
                version=version,
                at=last_change,
                detail={
                    "briefing": briefing.kind,
                    "outcomes": outcomes,
                    "duration_seconds": round((last_change - started_at).total_seconds(), 3),
                    "latency_buckets": _latency_buckets(latencies),
                    "latency_sum": round(sum(latencies), 3),
                    "latency_count": len(latencies),
                },
            )
    return finished


RETRY_FAILED_TIMER = timedelta(minutes=1)


def fire_due(
    session_factory: Any,
    settings: Settings,
    dispatch: briefings.Dispatcher,
    limit: int = 50,
    *,
    clock: Clock = SYSTEM,
) -> int:
    """Fire due timers, one transaction each. A timer whose work fails is postponed a
    minute and fired again then. (The operators' notice is only queued here: see
    app/acks/outbox.py for its sending and retries.)"""
    fired = 0
    for _ in range(limit):
        timer_id = None
        try:
            with session_scope(session_factory) as session:
                timer = followup.take_due_timer(session, clock.now())
                if timer is None:
                    return fired
                timer_id = timer.id
                timer.outcome = followup.fire(session, timer, settings=settings, dispatch=dispatch)[
                    :200
                ]
                followup.add_to_timeline(session, timer)
                log.info(
                    "timer_fired",
                    kind=timer.kind,
                    incident_id=str(timer.incident_id),
                    outcome=timer.outcome,
                )
        except Exception as exc:
            # Whatever failed (a database error, or a bug), this timer waits a minute and
            # the others still fire: one bad timer never blocks the rest.
            log.warning("timer_postponed", timer_id=timer_id, error=type(exc).__name__)
            if timer_id is not None:
                with session_scope(session_factory) as session:
                    session.execute(
                        update(IncidentTimer)
                        .where(IncidentTimer.id == timer_id)
                        .values(due_at=clock.now() + RETRY_FAILED_TIMER)
                    )
            continue
        fired += 1
    return fired
