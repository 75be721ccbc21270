"""An incident's timeline: what happened and who did it, written as it happens.

Each step (declared, fan-out started and finished, update, reminder, escalation, quota met,
operators notified, resolved or cancelled) is an `incident_events` row added in the
transaction of the step itself, so the timeline never tells of something that was rolled
back. Events and answers share one sequence per incident (`incidents.event_seq`), which
is what the events stream resumes from (`Last-Event-ID`).

Lock order: the incident row first. Writers that add an event take it before the counter
rows (`take_seq` at the start of their transaction, or `_open_incident`'s FOR UPDATE),
so an answer and a reminder of the same incident never wait for each other in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from app.db import session_scope
from app.models import (
    Briefing,
    BriefingTargeting,
    Delivery,
    DeliveryCounter,
    Incident,
    IncidentEvent,
)
from app.models.base import utcnow
from app.vocabulary import OPEN_DELIVERY_STATUSES, TimelineEventKind

# Delivery latency (from the briefing version's creation to the message leaving) is
# counted per finished fan-out in these buckets (seconds), for the /metrics histogram.
LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def take_seq(session: Session, incident_id: uuid.UUID) -> int:
    """The incident's next event number. The UPDATE locks the incident row until commit,
    so numbers of one incident commit in order (PostgreSQL sequences do not promise that)."""
    seq = session.execute(
        update(Incident)
        .where(Incident.id == incident_id)
        # Keep `updated_at` as it is: an answer is not a change of the incident.
        .values(event_seq=Incident.event_seq + 1, updated_at=Incident.updated_at)
        .returning(Incident.event_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    incident = session.identity_map.get(session.identity_key(Incident, incident_id))
    if isinstance(incident, Incident):
        # Keep a loaded incident in step, so a later flush does not write an older value.
        set_committed_value(incident, "event_seq", seq)
    return int(seq)


def add(
    session: Session,
    incident_id: uuid.UUID,
    kind: str,
    *,
    actor: str | None = None,
    version: int | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
    seq: int | None = None,
) -> IncidentEvent:
    """Append one event (`seq` if the caller took it early for the lock order)."""
    event = IncidentEvent(
        incident_id=incident_id,
        seq=seq if seq is not None else take_seq(session, incident_id),
        kind=kind,
        at=at or utcnow(),
        actor=actor,
        briefing_version=version,
        detail=detail or {},
    )
    session.add(event)
    session.flush()
    return event


def add_once(
    session: Session,
    incident_id: uuid.UUID,
    kind: str,
    dedupe_key: str,
    *,
    version: int | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> bool:
    """Append an event unless one with the same `dedupe_key` exists (a fan-out start seen
    by both the dispatch task and a sweep); True if this call added it."""
    exists = session.scalar(
        select(IncidentEvent.id).where(
            IncidentEvent.incident_id == incident_id, IncidentEvent.dedupe_key == dedupe_key
        )
    )
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                IncidentEvent(
                    incident_id=incident_id,
                    seq=take_seq(session, incident_id),
                    kind=kind,
                    at=at or utcnow(),
                    briefing_version=version,
                    detail=detail or {},
                    dedupe_key=dedupe_key,
                )
            )
            session.flush()
    except IntegrityError:
        return False  # the other writer got there first
    return True


def record_fanout_started(session: Session, briefing_ids: Sequence[int], at: datetime) -> int:
    """A fan-out starts when its briefing version's first rows are queued."""
    added = 0
    for briefing in session.scalars(
        select(Briefing).where(Briefing.id.in_(sorted(set(briefing_ids))))
    ):
        added += add_once(
            session,
            briefing.incident_id,
            TimelineEventKind.FANOUT_STARTED,
            f"{TimelineEventKind.FANOUT_STARTED}:{briefing.version}",
            version=briefing.version,
            detail={"briefing": briefing.kind},
            at=at,
        )
    return added


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


def events(
    session: Session, incident_id: uuid.UUID, *, after_seq: int = 0, limit: int = 500
) -> list[IncidentEvent]:
    """The incident's events after `after_seq`, oldest first."""
    return list(
        session.scalars(
            select(IncidentEvent)
            .where(IncidentEvent.incident_id == incident_id, IncidentEvent.seq > after_seq)
            .order_by(IncidentEvent.seq)
            .limit(limit)
        )
    )
