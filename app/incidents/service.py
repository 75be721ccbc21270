"""Declaring an incident and its later versions: audience, ledger rows, lifecycle."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import timeline
from app.acks.outbox import add_notice
from app.audit.service import record
from app.config import Settings
from app.db import contains_pattern
from app.errors import Conflict, FieldProblem, Forbidden, InvalidInput, NotFound
from app.incidents import audience, targeting
from app.incidents.briefings import (
    STANDARD_END,
    Dispatcher,
    add_briefing,
    add_deliveries,
    dispatch_after_commit,
    retire_unsent,
    supersede_versions,
)
from app.incidents.followup import create_timers
from app.incidents.schemas import (
    DEFAULT_RESPONSES,
    IncidentCreate,
    IncidentEnd,
    IncidentFilters,
    IncidentUpdate,
)
from app.models import (
    Briefing,
    BriefingTargeting,
    Delivery,
    Incident,
    Member,
    ReferenceCounter,
    Role,
    Roster,
)
from app.models.base import utcnow
from app.principal import Principal
from app.vocabulary import (
    ENDED_INCIDENT_STATUSES,
    BriefingKind,
    Channel,
    DeliveryStatus,
    IncidentStatus,
    TimelineEventKind,
)

# Who the audit trail names for what the sweeper decides by itself.
_SWEEPER = Principal(key_id=None, name="sweeper", role=Role.ADMIN)


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which declarations wait for a second principal (the two-person rule)."""

    severities: frozenset[str]
    for_exercises: bool
    ttl: timedelta
    operator_emails: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ApprovalPolicy:
        return cls(
            frozenset(settings.approval_severities),
            settings.approval_for_exercises,
            timedelta(minutes=settings.approval_ttl_minutes),
            tuple(settings.operator_emails),
        )

    def needed(self, severity: str, mode: str) -> bool:
        return severity in self.severities and (mode == "actual" or self.for_exercises)


def request_hash(payload: dict[str, Any]) -> str:
    """A digest of the request body, to tell a retry from a different request."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def next_reference(session: Session, year: int) -> str:
    """`RRMM-<year>-<n>`: the counter row is locked by the UPDATE until commit."""
    value = session.scalar(
        update(ReferenceCounter)
        .where(ReferenceCounter.year == year)
        .values(value=ReferenceCounter.value + 1)
        .returning(ReferenceCounter.value)
    )
    if value is None:
        try:
            with session.begin_nested():
                session.add(ReferenceCounter(year=year, value=1))
            value = 1
        except IntegrityError:  # another declaration created the year's row first
            return next_reference(session, year)
    return f"RRMM-{year}-{value:04d}"


def declare(
    session: Session,
    data: IncidentCreate,
    *,
    actor: Principal,
    idempotency_key: str | None,
    dispatch: Dispatcher,
    chunk_members: int,
    approval: ApprovalPolicy | None = None,
) -> tuple[Incident, bool]:
    """Declare an incident; its first chunk of members is targeted and their ledger rows
    written now, the rest by the worker (`jobs.advance`); dispatch starts after commit.
    A declaration the `approval` policy covers is written `pending_approval`, its briefing
    and nothing else: no target, no ledger row, no timer (`approve` writes them).

    Returns the incident and whether it was created now (False: an idempotent replay).
    """
    digest = request_hash(data.model_dump(mode="json"))
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, actor, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    now = utcnow()
    audience.check_known(
        session,
        Roster.id,
        data.followup.escalation_rosters,
        "followup.escalation_rosters",
        "no such roster",
    )
    audience.audience_condition(session, data.audience)  # unknown rosters or members: 422
    channels = data.channels or list(Channel)
    pending = approval is not None and approval.needed(data.severity, data.mode)
    try:
        # A savepoint: if the same key raced us, only this part is undone.
        with session.begin_nested():
            incident = incident_from(
                data,
                reference=next_reference(session, now.year),
                now=now,
                status=IncidentStatus.PENDING_APPROVAL if pending else IncidentStatus.MOBILIZING,
                approval_expires_at=now + approval.ttl if pending and approval else None,
                idempotency_key=idempotency_key,
                request_hash=digest,
                created_by_key_id=actor.key_id,
            )
            incident.created_by_person_id = actor.person_id
            session.add(incident)
            session.flush()
    except IntegrityError:
        existing = _by_idempotency_key(session, actor, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, digest), False
    briefing = add_briefing(
        session, incident, kind="declared", content=_content(data.briefing), actor=actor, now=now
    )
    if pending:
        described = audience.audience_condition(session, data.audience, check=False)
        reach = audience.count_reach(session, and_(described, audience.reachable(channels)), [])
        if not reach.members:
            raise _matches_nobody()
        timeline.add(
            session,
            incident.id,
            TimelineEventKind.APPROVAL_REQUESTED,
            actor=actor.name,
            version=briefing.version,
            detail={
                "members": reach.members,
                "mode": incident.mode,
                "expires_at": incident.approval_expires_at.isoformat()
                if incident.approval_expires_at
                else None,
            },
            at=now,
        )
        record(
            session,
            actor,
            "incident.approval_requested",
            "incident",
            incident.id,
            {"reference": incident.reference, "members": reach.members},
        )
        assert approval is not None
        _ask_for_approval(session, incident, actor, reach.members, approval)
        return incident, True
    job = targeting.start(session, incident, briefing, chunk_members=chunk_members, now=now)
    if not job.members_total:  # the request's transaction is rolled back: nothing written
        raise _matches_nobody()
    create_timers(session, incident, now)
    targeted = job.targets_expected
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.DECLARED,
        actor=actor.name,
        version=briefing.version,
        detail={"targeted": targeted, "mode": incident.mode},
        at=now,
    )
    record(
        session,
        actor,
        "incident.declare",
        "incident",
        incident.id,
        {"reference": incident.reference, "targeted": targeted},
    )
    dispatch_after_commit(session, briefing, dispatch)
    return incident, True


def _ask_for_approval(
    session: Session, incident: Incident, actor: Principal, members: int, policy: ApprovalPolicy
) -> None:
    """The operators are told a declaration waits (the outbox sends it after commit)."""
    recipients = list(dict.fromkeys([*policy.operator_emails, *incident.followup["notify_emails"]]))
    if not recipients:
        return
    expires = incident.approval_expires_at.isoformat() if incident.approval_expires_at else "-"
    add_notice(
        session,
        incident_id=incident.id,
        kind="approval",
        sequence=1,
        summary="operators told an approval is waiting",
        recipients=recipients,
        subject=f"[{incident.reference}] Approval needed: {incident.title}",
        body=(
            f"{actor.name} declared {incident.reference} ({incident.severity}, "
            f"{incident.mode}): {incident.title}\n\n"
            f"It goes to {members} member(s) once a second person approves it:\n"
            f"POST /v1/incidents/{incident.id}/approve (or /reject with a reason).\n"
            f"It expires unapproved at {expires}.\n"
        ),
    )


def _matches_nobody() -> InvalidInput:
    return InvalidInput(
        "the audience matches no active member reachable on the chosen channels",
        errors=[FieldProblem(field="body.audience", reason="matches nobody")],
    )


def _pending_incident(session: Session, incident_id: uuid.UUID) -> Incident:
    incident = session.scalar(select(Incident).where(Incident.id == incident_id).with_for_update())
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    if incident.status != IncidentStatus.PENDING_APPROVAL:
        raise Conflict(f"the incident is {incident.status}, not pending approval")
    return incident


def _is_declarer(actor: Principal, incident: Incident) -> bool:
    """Whether the approver is who declared: the same person (console), the same key, or
    nobody known (the CLI, an unattributed caller) — never counted as a second person."""
    if actor.key_id is None and actor.person_id is None:
        return True
    if actor.person_id is not None and actor.person_id == incident.created_by_person_id:
        return True
    return actor.key_id is not None and actor.key_id == incident.created_by_key_id


def approve(
    session: Session,
    incident_id: uuid.UUID,
    *,
    actor: Principal,
    dispatch: Dispatcher,
    chunk_members: int,
) -> Incident:
    """A second principal approves a pending declaration: it is targeted and sent now, as
    if declared at this moment (the acknowledgement deadline and timers count from now)."""
    incident = _pending_incident(session, incident_id)
    if _is_declarer(actor, incident):
        raise Forbidden("a second person must approve: the declarer cannot approve")
    now = utcnow()
    if incident.approval_expires_at is not None and incident.approval_expires_at <= now:
        raise Conflict("the approval window has passed: the declaration is expiring")
    briefing = session.scalar(
        select(Briefing).where(Briefing.incident_id == incident.id, Briefing.version == 1)
    )
    assert briefing is not None  # written with the pending declaration
    incident.status = IncidentStatus.MOBILIZING
    incident.decided_by_key_id = actor.key_id
    incident.decided_by_person_id = actor.person_id
    incident.decided_at = now
    incident.approval_expires_at = None
    incident.ack_deadline = now + timedelta(seconds=incident.followup["ack_deadline_seconds"])
    incident.updated_at = now
    session.flush()
    job = targeting.start(session, incident, briefing, chunk_members=chunk_members, now=now)
    if not job.members_total:
        raise Conflict("the audience matches no active member reachable any more")
    create_timers(session, incident, now)
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.APPROVED,
        actor=actor.name,
        version=briefing.version,
        detail={"targeted": job.targets_expected},
        at=now,
    )
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.DECLARED,
        actor=actor.name,
        version=briefing.version,
        detail={"targeted": job.targets_expected, "mode": incident.mode},
        at=now,
    )
    record(
        session,
        actor,
        "incident.approve",
        "incident",
        incident.id,
        {"reference": incident.reference, "targeted": job.targets_expected},
    )
    dispatch_after_commit(session, briefing, dispatch)
    return incident


def reject(session: Session, incident_id: uuid.UUID, reason: str, *, actor: Principal) -> Incident:
    """A pending declaration is refused: it ends `rejected`, nothing ever sent."""
    incident = _pending_incident(session, incident_id)
    now = utcnow()
    incident.status = IncidentStatus.REJECTED
    incident.decided_by_key_id = actor.key_id
    incident.decided_by_person_id = actor.person_id
    incident.decided_at = now
    incident.rejection_reason = reason
    incident.approval_expires_at = None
    incident.ended_at = now
    incident.updated_at = now
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.REJECTED,
        actor=actor.name,
        detail={"reason": reason},
        at=now,
    )
    record(session, actor, "incident.reject", "incident", incident.id, {"reason": reason})
    return incident


def expire_pending(session: Session, now: datetime | None = None) -> int:
    """Pending declarations nobody approved in time end `expired` (the sweeper's)."""
    now = now or utcnow()
    due = list(
        session.scalars(
            select(Incident)
            .where(
                Incident.status == IncidentStatus.PENDING_APPROVAL,
                Incident.approval_expires_at <= now,
            )
            .with_for_update(skip_locked=True)
        )
    )
    for incident in due:
        incident.status = IncidentStatus.EXPIRED
        incident.ended_at = now
        incident.updated_at = now
        incident.approval_expires_at = None
        timeline.add(session, incident.id, TimelineEventKind.EXPIRED, detail={}, at=now)
        record(session, _SWEEPER, "incident.expire", "incident", incident.id, {})
    return len(due)


def incident_from(data: IncidentCreate, *, reference: str, now: datetime, **state: Any) -> Incident:
    """The incident a declaration's body describes, declared `now` (not added to the
    session): the declaration's and the preview's, so both show the same."""
    return Incident(
        reference=reference,
        title=data.title,
        severity=data.severity,
        urgency=data.urgency,
        mode=data.mode,
        countries=data.countries,
        themes=list(dict.fromkeys(data.themes)),
        audience=data.audience.model_dump(mode="json"),
        channels=data.channels or list(Channel),
        responses=data.responses or DEFAULT_RESPONSES,
        followup=data.followup.model_dump(mode="json"),
        ack_deadline=now + timedelta(seconds=data.followup.ack_deadline_seconds),
        declared_at=now,
        updated_at=now,
        **state,
    )


def _content(briefing: dict[str, Any]) -> dict[str, Any]:
    return {language: entry.model_dump() for language, entry in briefing.items()}


def _by_idempotency_key(session: Session, actor: Principal, key: str) -> Incident | None:
    owner = (
        Incident.created_by_key_id.is_(None)
        if actor.key_id is None
        else Incident.created_by_key_id == actor.key_id
    )
    return session.scalar(select(Incident).where(owner, Incident.idempotency_key == key))


def _replay(existing: Incident, digest: str) -> Incident:
    if existing.request_hash != digest:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request body",
            errors=[
                FieldProblem(field="header.idempotency-key", reason="reused with another body")
            ],
        )
    return existing


def get_incident(session: Session, incident_id: uuid.UUID) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    return incident


def _open_incident(session: Session, incident_id: uuid.UUID) -> Incident:
    # FOR UPDATE on PostgreSQL: two updates of one incident get distinct version numbers.
    incident = session.scalar(select(Incident).where(Incident.id == incident_id).with_for_update())
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    if incident.status in ENDED_INCIDENT_STATUSES:
        raise Conflict(f"the incident is {incident.status}")
    return incident


def post_update(
    session: Session,
    incident_id: uuid.UUID,
    data: IncidentUpdate,
    *,
    actor: Principal,
    dispatch: Dispatcher,
    chunk_members: int,
) -> tuple[Incident, Briefing]:
    """A new briefing version to everyone targeted so far and to members who newly match
    (the first chunk written now, the rest by the worker)."""
    incident = _open_incident(session, incident_id)
    if incident.status == IncidentStatus.PENDING_APPROVAL:
        raise Conflict("the incident is pending approval: approve or reject it first")
    now = utcnow()
    retire_unsent(
        session,
        incident,
        to_status=DeliveryStatus.SUPERSEDED,
        reason="superseded by a newer version",
    )
    supersede_versions(session, incident, now)
    targeting.stop_pending(session, incident, now)
    briefing = add_briefing(
        session, incident, kind="updated", content=_content(data.briefing), actor=actor, now=now
    )
    job = targeting.start(session, incident, briefing, chunk_members=chunk_members, now=now)
    incident.updated_at = now
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.UPDATED,
        actor=actor.name,
        version=briefing.version,
        detail={"new_members": job.targets_expected, "members": job.members_total},
        at=now,
    )
    record(
        session,
        actor,
        "incident.update",
        "incident",
        incident.id,
        {
            "version": briefing.version,
            "new_members": job.targets_expected,
            "members": job.members_total,
        },
    )
    dispatch_after_commit(session, briefing, dispatch)
    return incident, briefing


def end_incident(
    session: Session,
    incident_id: uuid.UUID,
    data: IncidentEnd,
    *,
    kind: str,
    actor: Principal,
    dispatch: Dispatcher,
) -> tuple[Incident, Briefing]:
    """Resolve (stand-down) or cancel: what is not sent yet is not sent; every member who
    was briefed gets the notice."""
    assert kind in (BriefingKind.RESOLVED, BriefingKind.CANCELLED)
    incident = _open_incident(session, incident_id)
    now = utcnow()
    retired = retire_unsent(
        session, incident, to_status=DeliveryStatus.CANCELLED, reason=f"incident {kind}"
    )
    targeting.stop_pending(session, incident, now)
    content = (
        _content(data.briefing)
        if data.briefing
        else {
            language: {"subject": subject, "body": body, "talking_points": []}
            for language, (subject, body) in STANDARD_END[kind].items()
        }
    )
    briefing = add_briefing(session, incident, kind=kind, content=content, actor=actor, now=now)
    briefed = select(Delivery.member_id).where(
        Delivery.incident_id == incident.id,
        Delivery.status.in_((DeliveryStatus.SENT, DeliveryStatus.SENDING)),
    )
    recipients = and_(audience.recipients(incident), Member.id.in_(briefed))
    count = add_deliveries(session, incident, briefing, recipients, now=now)
    incident.status = kind
    incident.ended_at = now
    incident.updated_at = now
    timeline.add(
        session,
        incident.id,
        kind,
        actor=actor.name,
        version=briefing.version,
        detail={"stopped": retired, "deliveries": count},
        at=now,
    )
    record(
        session,
        actor,
        f"incident.{'resolve' if kind == 'resolved' else 'cancel'}",
        "incident",
        incident.id,
        {"version": briefing.version, "stopped": retired, "deliveries": count},
    )
    dispatch_after_commit(session, briefing, dispatch)
    return incident, briefing


def list_incidents(
    session: Session, filters: IncidentFilters, *, limit: int, after: uuid.UUID | None
) -> list[Incident]:
    """Newest first."""
    query = select(Incident).order_by(Incident.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(Incident.id < after)
    if filters.status:
        query = query.where(Incident.status == filters.status)
    if filters.mode:
        query = query.where(Incident.mode == filters.mode)
    if filters.severity:
        query = query.where(Incident.severity == filters.severity)
    if filters.q:
        pattern = contains_pattern(filters.q)
        query = query.where(
            or_(
                func.lower(Incident.title).like(pattern, escape="\\"),
                func.lower(Incident.reference).like(pattern, escape="\\"),
            )
        )
    return list(session.scalars(query))


def latest_versions(session: Session, incident_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not incident_ids:
        return {}
    rows = session.execute(
        select(Briefing.incident_id, func.max(Briefing.version).label("version"))
        .where(Briefing.incident_id.in_(incident_ids))
        .group_by(Briefing.incident_id)
    )
    return {row.incident_id: row.version for row in rows}


def briefings(session: Session, incident_id: uuid.UUID) -> list[Briefing]:
    get_incident(session, incident_id)
    return list(
        session.scalars(
            select(Briefing).where(Briefing.incident_id == incident_id).order_by(Briefing.version)
        )
    )


def list_deliveries(
    session: Session,
    incident_id: uuid.UUID,
    *,
    status: str | None,
    channel: str | None,
    limit: int,
    after: int | None,
) -> list[Row[Any]]:
    get_incident(session, incident_id)
    query = (
        select(Delivery, Briefing.version, Member.name)
        .join(Briefing, Briefing.id == Delivery.briefing_id)
        .outerjoin(Member, Member.id == Delivery.member_id)
        .where(Delivery.incident_id == incident_id)
        .order_by(Delivery.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(Delivery.id > after)
    if status:
        query = query.where(Delivery.status == status)
    if channel:
        query = query.where(Delivery.channel == channel)
    return list(session.execute(query))


def activate_mobilized(session: Session) -> int:
    """`mobilizing → active` once every first-version delivery due now has had its first
    attempt (deferred quiet-hours rows do not hold an incident back) and no version is
    still being targeted."""
    now = utcnow()
    waiting = (
        select(Delivery.id)
        .join(Briefing, Briefing.id == Delivery.briefing_id)
        .where(
            Delivery.incident_id == Incident.id,
            Briefing.version == 1,
            or_(
                Delivery.status == DeliveryStatus.SENDING,
                and_(
                    Delivery.status == DeliveryStatus.PENDING,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                ),
            ),
        )
        .exists()
    )
    still_targeting = (
        select(BriefingTargeting.briefing_id)
        .where(
            BriefingTargeting.incident_id == Incident.id, BriefingTargeting.finished_at.is_(None)
        )
        .exists()
    )
    activated = list(
        session.scalars(
            update(Incident)
            .where(Incident.status == IncidentStatus.MOBILIZING, ~waiting, ~still_targeting)
            .values(status=IncidentStatus.ACTIVE, updated_at=now)
            .returning(Incident.id)
            .execution_options(synchronize_session=False)
        )
    )
    for incident_id in activated:  # their rows are locked by the UPDATE (lock order)
        timeline.add(session, incident_id, TimelineEventKind.ACTIVATED, at=now)
    return len(activated)
