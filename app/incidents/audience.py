"""Who an incident's audience is, as SQL conditions on `members`: the audience definition
resolved, the channels that reach a member, who is targeted already, how many match."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from app.errors import FieldProblem, InvalidInput
from app.incidents.schemas import Audience
from app.members.service import json_array_contains, json_array_has_language
from app.models import Incident, IncidentTarget, Member, Roster, RosterMember
from app.vocabulary import Channel, MemberStatus

_CHECK_CHUNK = 500


# A member is reachable on a channel when the channel has an address to send to.
REACHES: dict[str, ColumnElement[bool]] = {
    Channel.EMAIL: and_(Member.email.is_not(None), Member.email != ""),
    Channel.WEBHOOK: and_(
        Member.webhook_url.is_not(None),
        Member.webhook_url != "",
        Member.webhook_disabled_at.is_(None),
    ),
}


def reachable(channels: Sequence[str]) -> ColumnElement[bool]:
    """Active members whom at least one of `channels` can reach."""
    return and_(Member.status == MemberStatus.ACTIVE, or_(*(REACHES[c] for c in channels)))


def targeted_by(incident_id: uuid.UUID) -> ColumnElement[bool]:
    return exists().where(
        IncidentTarget.incident_id == incident_id, IncidentTarget.member_id == Member.id
    )


def check_known(
    session: Session,
    column: Any,
    ids: Sequence[uuid.UUID],
    field: str,
    reason: str,
) -> None:
    """Every id exists, else a 422 naming the unknown ones."""
    known: set[uuid.UUID] = set()
    for start in range(0, len(ids), _CHECK_CHUNK):
        chunk = ids[start : start + _CHECK_CHUNK]
        known.update(session.scalars(select(column).where(column.in_(chunk))))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InvalidInput(
            f"{field}: {len(unknown)} unknown id(s)",
            errors=[
                FieldProblem(field=f"body.{field}", reason=f"{reason}: {i}") for i in unknown[:50]
            ],
        )


def audience_condition(
    session: Session, audience: Audience, *, check: bool = True
) -> ColumnElement[bool]:
    """The active members the audience describes, as a condition on `members`. Unknown
    rosters or members are a 422 (`check`; a stored audience was checked when written)."""
    if check:
        check_known(session, Roster.id, audience.rosters, "audience.rosters", "no such roster")
        check_known(
            session, Member.id, audience.member_ids, "audience.member_ids", "no such member"
        )
    sources = []
    if audience.rosters:
        sources.append(
            Member.id.in_(
                select(RosterMember.member_id).where(RosterMember.roster_id.in_(audience.rosters))
            )
        )
    if audience.networks:
        sources.append(Member.network.in_(audience.networks))
    if audience.member_ids:
        sources.append(Member.id.in_(audience.member_ids))
    parts = [Member.status == MemberStatus.ACTIVE, or_(*sources)]
    if audience.countries:
        parts.append(Member.country.in_(audience.countries))
    if audience.languages:
        # "fr" also finds members who read "fr-CA", as the language choice does.
        parts.append(
            or_(
                *(
                    json_array_has_language(session, Member.languages, lang)
                    for lang in audience.languages
                )
            )
        )
    for column, values in ((Member.themes, audience.themes), (Member.tags, audience.tags)):
        if values:
            parts.append(or_(*(json_array_contains(session, column, v) for v in values)))
    return and_(*parts)


@dataclass(frozen=True)
class Reach:
    """How many members a condition matches and how many ledger rows they make."""

    members: int
    deliveries: int


def count_reach(session: Session, condition: ColumnElement[bool], channels: Sequence[str]) -> Reach:
    """One aggregate query: members matching `condition`, and their reachable channels."""
    sums = [func.coalesce(func.sum(case((REACHES[c], 1), else_=0)), 0) for c in channels]
    row = session.execute(select(func.count(), *sums).select_from(Member).where(condition)).one()
    return Reach(members=int(row[0]), deliveries=sum(int(n) for n in row[1:]))


def newcomers(session: Session, incident: Incident) -> ColumnElement[bool]:
    """Members the incident's audience matches and its channels reach, not targeted yet."""
    audience = audience_condition(session, Audience(**incident.audience), check=False)
    return and_(audience, reachable(incident.channels), ~targeted_by(incident.id))


def recipients(incident: Incident) -> ColumnElement[bool]:
    """Who a declared or updated version goes to, once the newcomers are targeted."""
    return and_(Member.status == MemberStatus.ACTIVE, targeted_by(incident.id))
