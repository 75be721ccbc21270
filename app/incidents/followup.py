"""Chasing silence: reminder rounds, escalation to a second tier, and the deadline.

Every step is an `incident_timers` row written when the incident is declared and fired
once by beat's sweep (a conditional UPDATE marks it done in the same transaction that does
the work), so a restart or a lost broker message loses no deadline.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from app import timeline
from app.acks import outbox
from app.acks.quotas import met_segments, quota_progress
from app.config import Settings
from app.incidents import audience, briefings
from app.models import CurrentAck, Incident, IncidentTimer, Member, RosterMember
from app.models.base import utcnow
from app.vocabulary import ENDED_INCIDENT_STATUSES, BriefingKind, TimelineEventKind, TimerKind

log = structlog.get_logger(__name__)


def create_timers(session: Session, incident: Incident, now: datetime) -> None:
    followup = incident.followup
    interval = timedelta(seconds=followup["reminder_interval_seconds"])
    timers = [
        IncidentTimer(
            incident_id=incident.id, kind=TimerKind.REMINDER, sequence=n, due_at=now + n * interval
        )
        for n in range(1, followup["reminders"] + 1)
    ]
    if followup.get("escalation_rosters"):
        timers.append(
            IncidentTimer(
                incident_id=incident.id,
                kind=TimerKind.ESCALATION,
                sequence=1,
                due_at=now + (followup["reminders"] + 1) * interval,
            )
        )
    timers.append(
        IncidentTimer(
            incident_id=incident.id,
            kind=TimerKind.DEADLINE,
            sequence=1,
            due_at=now + timedelta(seconds=followup["ack_deadline_seconds"]),
        )
    )
    session.add_all(timers)


def take_due_timer(session: Session, now: datetime) -> IncidentTimer | None:
    """Take one due timer: the conditional UPDATE makes sure only one sweep fires it."""
    candidate = session.scalar(
        select(IncidentTimer.id)
        .where(IncidentTimer.done_at.is_(None), IncidentTimer.due_at <= now)
        .order_by(IncidentTimer.due_at)
        .limit(1)
    )
    if candidate is None:
        return None
    taken = session.execute(
        update(IncidentTimer)
        .where(IncidentTimer.id == candidate, IncidentTimer.done_at.is_(None))
        .values(done_at=now)
        .returning(IncidentTimer.id)
        .execution_options(synchronize_session=False)
    ).scalar()
    return session.get(IncidentTimer, taken) if taken is not None else None


def _silent_targets(session: Session, incident: Incident) -> ColumnElement[bool]:
    """Targeted, active members with no answer, outside every segment that met its quota."""

    answered = select(CurrentAck.member_id).where(CurrentAck.incident_id == incident.id)
    condition = [audience.recipients(incident), Member.id.not_in(answered)]
    met = met_segments(session, incident)
    if met is not None:
        condition.append(~met)
    return and_(*condition)


def fire(
    session: Session, timer: IncidentTimer, *, settings: Settings, dispatch: briefings.Dispatcher
) -> str:
    """Do what the timer is for; returns a short outcome kept on the timer row."""
    # The incident row first (see app.timeline for the lock order): a reminder
    # and an update of one incident also get distinct briefing versions this way.
    incident = session.get(Incident, timer.incident_id, with_for_update=True)
    if incident is None or incident.status in ENDED_INCIDENT_STATUSES:
        return "incident ended"
    if timer.kind == TimerKind.REMINDER:
        silent = _silent_targets(session, incident)
        members = audience.count_reach(session, silent, []).members
        if not members:
            return "nobody to remind"
        briefing = briefings.add_follow_up_briefing(session, incident, kind=BriefingKind.REMINDER)
        count = briefings.add_deliveries(session, incident, briefing, silent, now=utcnow())
        briefings.dispatch_after_commit(session, briefing, dispatch)
        return f"reminded {members} members ({count} deliveries)"
    if timer.kind == TimerKind.ESCALATION:
        return _escalate(session, incident, dispatch)
    return _deadline(session, incident, settings, timer)


def _escalate(session: Session, incident: Incident, dispatch: briefings.Dispatcher) -> str:
    if all(p.met for p in quota_progress(session, incident)) and incident.followup.get("quotas"):
        return "every quota met: no escalation"
    rosters = [uuid.UUID(r) for r in incident.followup.get("escalation_rosters", [])]
    in_rosters = select(RosterMember.member_id).where(RosterMember.roster_id.in_(rosters))
    condition = [
        Member.id.in_(in_rosters),
        audience.reachable(incident.channels),
        ~audience.targeted_by(incident.id),
    ]
    met = met_segments(session, incident)
    if met is not None:
        condition.append(~met)
    escalated = and_(*condition)
    members = audience.count_reach(session, escalated, []).members
    if not members:
        return "no one left to escalate to"
    now = utcnow()
    briefing = briefings.add_follow_up_briefing(session, incident, kind=BriefingKind.ESCALATED)
    # Their rows first: once targeted, they no longer match `escalated`.
    count = briefings.add_deliveries(session, incident, briefing, escalated, now=now)
    briefings.bump_targeted(
        session, incident.id, briefings.add_targets(session, incident, escalated, now)
    )
    briefings.dispatch_after_commit(session, briefing, dispatch)
    return f"escalated to {members} members ({count} deliveries)"


def _deadline(
    session: Session, incident: Incident, settings: Settings, timer: IncidentTimer
) -> str:
    unmet = [p for p in quota_progress(session, incident) if not p.met]
    if not unmet:
        return "deadline passed, every quota met"
    recipients = list(
        dict.fromkeys([*settings.operator_emails, *incident.followup.get("notify_emails", [])])
    )
    if not recipients:
        return f"deadline passed, {len(unmet)} quota(s) unmet, no operator address configured"
    lines = [
        f"The acknowledgement deadline of {incident.reference} ({incident.title}) has passed "
        f"with {len(unmet)} coverage quota(s) unmet:",
        "",
    ]
    for progress in unmet:
        quota = progress.quota
        segment = ", ".join(
            part
            for part in (
                quota.get("network") or "all networks",
                "/".join(quota.get("countries") or []) or "all countries",
                "/".join(quota.get("languages") or []) or "all languages",
            )
        )
        lines.append(
            f"- {segment}: {progress.answered} of {quota['min']} "
            f"({'/'.join(quota['responses'])}), {progress.targeted} targeted"
        )
    # Queued, not sent: the worker sends it after this transaction commits (app/acks/outbox.py),
    # so no SMTP conversation runs while this incident's row is locked.
    outbox.add_notice(
        session,
        incident_id=incident.id,
        kind="deadline",
        sequence=timer.sequence,
        summary=f"operators notified: {len(unmet)} quota(s) unmet",
        recipients=recipients,
        subject=f"[{incident.reference}] Acknowledgement deadline passed: quotas unmet",
        body="\n".join(lines) + "\n",
    )
    return f"deadline passed, {len(unmet)} quota(s) unmet: operators' notice queued"


def add_to_timeline(session: Session, timer: IncidentTimer) -> None:
    """What a fired timer did, for the timeline (nothing if the incident had ended)."""
    outcome = timer.outcome or ""
    if outcome == "incident ended":
        return
    kinds: dict[str, TimelineEventKind] = {
        TimerKind.REMINDER: TimelineEventKind.REMINDER,
        TimerKind.ESCALATION: TimelineEventKind.ESCALATION,
    }
    kind = kinds.get(timer.kind)
    if kind is None:
        notified = outcome.startswith("operators notified")
        kind = TimelineEventKind.OPERATORS_NOTIFIED if notified else TimelineEventKind.DEADLINE
    timeline.add(
        session, timer.incident_id, kind, detail={"sequence": timer.sequence, "outcome": outcome}
    )
