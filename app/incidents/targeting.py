"""Who a briefing version goes to, written set-based, chunk by chunk; and a preview's
counts of the same.

Targets (`incident_targets`) and ledger rows (`deliveries`) are written by INSERT … SELECT
over `members` (app/incidents/briefings.py): no member row passes through Python. Each
row's language is chosen in SQL by a CASE over the few distinct language lists of the
members written (`choose_language` decides each list once), and a deferred first attempt
(quiet hours) likewise over their distinct quiet-hours settings.

A declaration or an update writes its first chunk of members in the request (bounded work,
however large the network) and answers. `jobs.advance()` writes the rest in the worker right
after commit, one member-id chunk per transaction, dispatching each chunk's deliveries as
soon as it is written; the sweeper resumes a job whose worker died (`resume_stalled`).
A chunk's targets, rows, counters and the job's cursor are written in one transaction
under the incident's row lock, so each chunk is written exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import (
    ColumnElement,
    Text,
    Uuid,
    and_,
    any_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app import timeline
from app.incidents.audience import (
    REACHES,
    audience_condition,
    count_reach,
    newcomers,
    reachable,
    recipients,
)
from app.incidents.briefings import (
    add_deliveries,
    add_targets,
    bump_targeted,
    falls_back,
    first_attempt,
    language_of,
)
from app.incidents.schemas import Audience
from app.models import (
    Briefing,
    BriefingTargeting,
    Incident,
    IncidentTarget,
    Member,
)
from app.models.base import utcnow
from app.vocabulary import IncidentStatus, MemberStatus, TimelineEventKind

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Breakdown:
    """What a version would do to the members matching a condition (a preview)."""

    members: int
    by_network: dict[str, int]
    by_country: dict[str, int]
    by_language: dict[str, int]
    by_channel: dict[str, int]
    fallback: dict[str, int]  # language sent → members none of whose languages it has
    deferred: int  # members whose first attempt waits for the end of their quiet hours
    deferred_until: datetime | None  # the latest such wait
    unreachable: int  # members of the audience no chosen channel reaches


def breakdown(
    session: Session,
    audience: ColumnElement[bool],
    condition: ColumnElement[bool],
    *,
    channels: Sequence[str],
    briefing_languages: Sequence[str],
    severity: str,
    now: datetime,
) -> Breakdown:
    """The counts of a preview, set-based: one GROUP BY over the members matching
    `condition` (the language and quiet-hours CASEs as the ledger writes them, built from
    their few distinct lists and settings), one COUNT for those of `audience` no channel
    reaches."""
    language = language_of(session, condition, briefing_languages).label("language")
    fallback = falls_back(session, condition, briefing_languages).label("fallback")
    not_before = first_attempt(session, condition, severity, now).label("not_before")
    # The CASEs in a subquery, grouped outside: their bound parameters appear once.
    members = (
        select(
            Member.network,
            Member.country,
            language,
            fallback,
            not_before,
            *(case((REACHES[c], 1), else_=0).label(c) for c in channels),
        )
        .where(condition)
        .subquery()
    )
    keys = [members.c[k] for k in ("network", "country", "language", "fallback", "not_before")]
    rows = session.execute(
        select(*keys, func.count(), *(func.sum(members.c[c]) for c in channels)).group_by(*keys)
    ).all()
    by_network: Counter[str] = Counter()
    by_country: Counter[str] = Counter()
    by_language: Counter[str] = Counter()
    by_channel: Counter[str] = Counter(dict.fromkeys(channels, 0))
    fell_back: Counter[str] = Counter()
    deferred = 0
    until: datetime | None = None
    for row in rows:
        network, country, chosen, lacking, wait, count = row[:6]
        by_network[network] += count
        by_country[country] += count
        by_language[chosen] += count
        for channel, n in zip(channels, row[6:], strict=True):
            by_channel[channel] += int(n)
        if lacking:
            fell_back[chosen] += count
        if wait is not None:
            deferred += count
            until = wait if until is None or wait > until else until
    unreachable = session.scalar(
        select(func.count()).select_from(Member).where(audience, ~reachable(channels))
    )
    return Breakdown(
        members=sum(by_network.values()),
        by_network=dict(by_network),
        by_country=dict(by_country),
        by_language=dict(by_language),
        by_channel=dict(by_channel),
        fallback=dict(fell_back),
        deferred=deferred,
        deferred_until=until,
        unreachable=int(unreachable or 0),
    )


def _one_of(session: Session, column: Any, ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
    """`column` is one of `ids`, bound as ONE parameter (an array, or JSON on SQLite):
    an IN list of a thousand parameters costs SQLAlchemy more than the statement costs
    the database."""
    if session.get_bind().dialect.name == "postgresql":
        array: ColumnElement[bool] = column == any_(
            cast(literal(list(ids), ARRAY(Uuid)), ARRAY(Uuid))
        )
        return array
    listed = func.json_each(literal(json.dumps([i.hex for i in ids]), Text)).table_valued("value")
    json_list: ColumnElement[bool] = column.in_(select(listed.c.value))
    return json_list


def _next_members(
    session: Session,
    incident: Incident,
    briefing: Briefing,
    after: uuid.UUID | None,
    limit: int,
) -> tuple[list[uuid.UUID], bool]:
    """The next `limit` members (by id) the version goes to, and whether more follow.

    A declaration goes to the audience's reachable members; an update also to everyone
    targeted so far. Each is an ordered, limited walk of one index, merged here."""
    audience = audience_condition(session, Audience(**incident.audience), check=False)
    walks = [select(Member.id).where(audience, reachable(incident.channels))]
    if briefing.kind != "declared":
        walks.append(
            select(IncidentTarget.member_id)
            .join(Member, Member.id == IncidentTarget.member_id)
            .where(IncidentTarget.incident_id == incident.id, Member.status == MemberStatus.ACTIVE)
        )
    found: set[uuid.UUID] = set()
    for walk in walks:
        key = walk.selected_columns[0]
        if after is not None:
            walk = walk.where(key > after)
        found.update(session.scalars(walk.order_by(key).limit(limit)))
    ordered = sorted(found)
    return ordered[:limit], len(ordered) >= limit


# --- the chunked job of a declared or updated version ---------------------------------


def start(
    session: Session,
    incident: Incident,
    briefing: Briefing,
    *,
    chunk_members: int,
    now: datetime,
) -> BriefingTargeting:
    """Count who the version goes to, target its first chunk and write its rows. The
    rest is the worker's (`jobs.advance`), unless the first chunk was everyone."""
    if briefing.kind == "declared":
        # Nobody is targeted yet: everyone it goes to is new. One COUNT, no lookups.
        audience = audience_condition(session, Audience(**incident.audience), check=False)
        total = count_reach(session, and_(audience, reachable(incident.channels)), []).members
        expected = total
    else:
        new = newcomers(session, incident)
        row = session.execute(
            select(func.count(), func.coalesce(func.sum(case((new, 1), else_=0)), 0)).where(
                or_(new, recipients(incident))
            )
        ).one()
        total, expected = int(row[0]), int(row[1])
    job = BriefingTargeting(
        briefing_id=briefing.id,
        incident_id=incident.id,
        members_total=total,
        members_done=0,
        targets_expected=expected,
        targets_added=0,
        rows_written=0,
        started_at=now,
        touched_at=now,
    )
    session.add(job)
    bump_targeted(session, incident.id, expected)
    session.expire(incident, ["targeted"])
    session.flush()
    write_chunk(session, incident, briefing, job, chunk_members=chunk_members, now=now)
    return job


def write_chunk(
    session: Session,
    incident: Incident,
    briefing: Briefing,
    job: BriefingTargeting,
    *,
    chunk_members: int,
    now: datetime,
) -> None:
    """The next member-id range: its newcomers targeted, then its rows written."""
    if (
        incident.status in (IncidentStatus.RESOLVED, IncidentStatus.CANCELLED)
        or briefing.superseded_at is not None
    ):
        _finish(session, incident, briefing, job, now, stopped=True)
        return
    first = job.members_done == 0
    ids, more = _next_members(session, incident, briefing, job.after_member_id, chunk_members)
    if ids:
        # The chunk's statements find its members by id alone (one array parameter):
        # bounded work whatever the network's size, with no anti-join whose plan depends
        # on how fresh the statistics of a growing `incident_targets` are.
        known = set(
            session.scalars(
                select(IncidentTarget.member_id).where(
                    IncidentTarget.incident_id == incident.id,
                    _one_of(session, IncidentTarget.member_id, ids),
                )
            )
        )
        new = [member for member in ids if member not in known]
        if new:
            job.targets_added += add_targets(
                session, incident, _one_of(session, Member.id, new), now
            )
        everyone = and_(_one_of(session, Member.id, ids), Member.status == MemberStatus.ACTIVE)
        job.rows_written += add_deliveries(session, incident, briefing, everyone, now=now)
        job.members_done += len(ids)
        job.after_member_id = ids[-1]
    job.touched_at = now
    if not more:
        _finish(session, incident, briefing, job, now, stopped=False, announce=not first)
    session.flush()


def _finish(
    session: Session,
    incident: Incident,
    briefing: Briefing,
    job: BriefingTargeting,
    now: datetime,
    *,
    stopped: bool,
    announce: bool = True,
) -> None:
    job.finished_at = now
    job.touched_at = now
    # The count given up front, corrected by what was written (members change meanwhile).
    bump_targeted(session, incident.id, job.targets_added - job.targets_expected)
    session.expire(incident, ["targeted"])
    if not announce:
        return  # written whole in the request: its declared/updated event says it all
    seconds = round((now - job.started_at).total_seconds(), 3)
    timeline.add(
        session,
        incident.id,
        TimelineEventKind.TARGETED,
        version=briefing.version,
        detail={
            "members": job.members_done,
            "new_members": job.targets_added,
            "deliveries": job.rows_written,
            "seconds": seconds,
            "stopped": stopped,
        },
        at=now,
    )


def stop_pending(session: Session, incident: Incident, now: datetime) -> int:
    """An update, a resolve or a cancel replaces what is still being targeted: those jobs
    end here (under the incident's lock, which the caller holds), their counts corrected,
    and their remaining members are left to the new version."""
    jobs = list(
        session.scalars(
            select(BriefingTargeting)
            .where(
                BriefingTargeting.incident_id == incident.id,
                BriefingTargeting.finished_at.is_(None),
            )
            .with_for_update()
        )
    )
    for job in jobs:
        briefing = session.get(Briefing, job.briefing_id)
        assert briefing is not None  # the job's row is deleted with its briefing
        _finish(session, incident, briefing, job, now, stopped=True)
    return len(jobs)


def resume_stalled(
    session: Session, *, stalled_after: timedelta, resume: Callable[[int], object]
) -> int:
    """The jobs nobody moved for `stalled_after` (their worker died, or its task was lost
    with the broker): handed to `resume` again. Returns how many."""
    now = utcnow()
    # Touched as they are handed over: a job whose task waits behind a long queue is
    # handed over again once per `stalled_after`, not at every sweep.
    stalled = list(
        session.scalars(
            update(BriefingTargeting)
            .where(
                BriefingTargeting.finished_at.is_(None),
                BriefingTargeting.touched_at < now - stalled_after,
            )
            .values(touched_at=now)
            .returning(BriefingTargeting.briefing_id)
            .execution_options(synchronize_session=False)
        )
    )
    for briefing_id in stalled:
        resume(briefing_id)
    return len(stalled)
