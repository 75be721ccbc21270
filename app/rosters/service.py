"""Rosters: named groups of members that an incident can target."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.errors import Conflict, FieldProblem, InvalidInput, NotFound
from app.models import Member, Roster, RosterMember
from app.principal import Principal
from app.rosters.schemas import RosterCreate, RosterUpdate

_CHUNK = 500


def _name_taken() -> Conflict:
    return Conflict(
        "a roster with this name already exists",
        errors=[FieldProblem(field="body.name", reason="already used by another roster")],
    )


def _flush(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise _name_taken() from exc


def create_roster(session: Session, data: RosterCreate, *, actor: Principal) -> Roster:
    if session.scalar(select(Roster.id).where(Roster.name == data.name)) is not None:
        raise _name_taken()
    roster = Roster(name=data.name, description=data.description)
    session.add(roster)
    _flush(session)
    record(session, actor, "roster.create", "roster", roster.id, {})
    return roster


def get_roster(session: Session, roster_id: uuid.UUID) -> Roster:
    roster = session.get(Roster, roster_id)
    if roster is None:
        raise NotFound(f"no roster {roster_id}")
    return roster


def member_count(session: Session, roster_id: uuid.UUID) -> int:
    count = session.scalar(
        select(func.count()).select_from(RosterMember).where(RosterMember.roster_id == roster_id)
    )
    return count or 0


def member_counts(session: Session, roster_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not roster_ids:
        return {}
    rows = session.execute(
        select(RosterMember.roster_id, func.count().label("member_count"))
        .where(RosterMember.roster_id.in_(roster_ids))
        .group_by(RosterMember.roster_id)
    )
    return {row.roster_id: row.member_count for row in rows}


def list_rosters(session: Session, *, limit: int, after: uuid.UUID | None) -> list[Roster]:
    query = select(Roster).order_by(Roster.id).limit(limit + 1)
    if after is not None:
        query = query.where(Roster.id > after)
    return list(session.scalars(query))


def update_roster(
    session: Session, roster_id: uuid.UUID, data: RosterUpdate, *, actor: Principal
) -> Roster:
    roster = get_roster(session, roster_id)
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != roster.name:
        taken = session.scalar(select(Roster.id).where(Roster.name == changes["name"]))
        if taken is not None:
            raise _name_taken()
    for column, value in changes.items():
        setattr(roster, column, value)
    _flush(session)
    record(session, actor, "roster.update", "roster", roster.id, {"fields": sorted(changes)})
    return roster


def delete_roster(session: Session, roster_id: uuid.UUID, *, actor: Principal) -> None:
    roster = get_roster(session, roster_id)
    session.execute(delete(RosterMember).where(RosterMember.roster_id == roster_id))
    session.delete(roster)
    session.flush()
    record(session, actor, "roster.delete", "roster", roster_id, {})


def add_members(
    session: Session, roster_id: uuid.UUID, member_ids: Sequence[uuid.UUID], *, actor: Principal
) -> int:
    """Add members (already present ones are left alone). Unknown ids: 422, nothing added."""
    get_roster(session, roster_id)
    wanted = list(dict.fromkeys(member_ids))
    known: set[uuid.UUID] = set()
    present: set[uuid.UUID] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        known.update(session.scalars(select(Member.id).where(Member.id.in_(chunk))))
        present.update(
            session.scalars(
                select(RosterMember.member_id).where(
                    RosterMember.roster_id == roster_id, RosterMember.member_id.in_(chunk)
                )
            )
        )
    unknown = [member_id for member_id in wanted if member_id not in known]
    if unknown:
        raise InvalidInput(
            f"{len(unknown)} unknown member id(s); nothing was added",
            errors=[
                FieldProblem(field=f"body.member_ids.{wanted.index(m)}", reason="no such member")
                for m in unknown[:100]
            ],
        )
    new = [{"roster_id": roster_id, "member_id": m} for m in wanted if m not in present]
    if new:
        session.execute(insert(RosterMember), new)
    record(session, actor, "roster.members.add", "roster", roster_id, {"count": len(new)})
    return len(new)


def remove_members(
    session: Session, roster_id: uuid.UUID, member_ids: Sequence[uuid.UUID], *, actor: Principal
) -> int:
    get_roster(session, roster_id)
    removed = 0
    wanted = list(dict.fromkeys(member_ids))
    for start in range(0, len(wanted), _CHUNK):
        result = session.execute(
            delete(RosterMember).where(
                RosterMember.roster_id == roster_id,
                RosterMember.member_id.in_(wanted[start : start + _CHUNK]),
            )
        )
        removed += result.rowcount  # type: ignore[attr-defined]
    record(session, actor, "roster.members.remove", "roster", roster_id, {"count": removed})
    return removed


def list_roster_members(
    session: Session, roster_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[Member]:
    get_roster(session, roster_id)
    query = (
        select(Member)
        .join(RosterMember, RosterMember.member_id == Member.id)
        .where(RosterMember.roster_id == roster_id)
        .order_by(Member.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(Member.id > after)
    return list(session.scalars(query))
