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
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.models import (
    Briefing,
    Incident,
    IncidentEvent,
)
from app.models.base import utcnow
from app.vocabulary import TimelineEventKind

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
