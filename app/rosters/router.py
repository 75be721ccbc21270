"""HTTP routes for rosters and their members."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from app.deps import Operator, SessionDep
from app.members.schemas import Member
from app.members.service import member_out
from app.models import Roster as RosterRow
from app.pagination import Page, PageDep, page
from app.rosters import service
from app.rosters.schemas import (
    Roster,
    RosterCreate,
    RosterMembersChange,
    RosterMembersChanged,
    RosterUpdate,
)

router = APIRouter(prefix="/v1/rosters", tags=["rosters"])


def _views(session: Session, rosters: Sequence[RosterRow]) -> list[Roster]:
    counts = service.member_counts(session, [r.id for r in rosters])
    return [Roster.from_row(r, member_count=counts.get(r.id, 0)) for r in rosters]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Roster)
def create_roster(body: RosterCreate, session: SessionDep, actor: Operator) -> Roster:
    """Create a named group of members, such as "Editors — Maghreb". Names are unique."""
    return Roster.from_row(service.create_roster(session, body, actor=actor), member_count=0)


@router.get("", response_model=Page[Roster])
def list_rosters(
    session: SessionDep,
    _actor: Operator,
    pages: PageDep,
) -> Page[Roster]:
    """All rosters with their member counts, a page at a time."""
    rows = service.list_rosters(session, limit=pages.limit, after=pages.after_uuid())
    return page(
        rows, pages.limit, key=lambda r: str(r.id), view=lambda rosters: _views(session, rosters)
    )


@router.get("/{roster_id}", response_model=Roster)
def get_roster(roster_id: uuid.UUID, session: SessionDep, _actor: Operator) -> Roster:
    """One roster and how many members it holds."""
    roster = service.get_roster(session, roster_id)
    return Roster.from_row(roster, member_count=service.member_count(session, roster_id))


@router.patch("/{roster_id}", response_model=Roster)
def update_roster(
    roster_id: uuid.UUID, body: RosterUpdate, session: SessionDep, actor: Operator
) -> Roster:
    """Rename a roster or change its description."""
    roster = service.update_roster(session, roster_id, body, actor=actor)
    return Roster.from_row(roster, member_count=service.member_count(session, roster_id))


@router.delete("/{roster_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_roster(roster_id: uuid.UUID, session: SessionDep, actor: Operator) -> Response:
    """Delete a roster. Its members stay in the network."""
    service.delete_roster(session, roster_id, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{roster_id}/members", response_model=Page[Member])
def list_roster_members(
    roster_id: uuid.UUID,
    session: SessionDep,
    _actor: Operator,
    pages: PageDep,
) -> Page[Member]:
    """The members of a roster, a page at a time."""
    rows = service.list_roster_members(
        session, roster_id, limit=pages.limit, after=pages.after_uuid()
    )
    return page(
        rows,
        pages.limit,
        key=lambda m: str(m.id),
        view=lambda members: [Member.model_validate(member_out(m)) for m in members],
    )


@router.post("/{roster_id}/members", response_model=RosterMembersChanged)
def add_roster_members(
    roster_id: uuid.UUID, body: RosterMembersChange, session: SessionDep, actor: Operator
) -> RosterMembersChanged:
    """Add members by id. Members already in the roster are left alone; any unknown id is
    a 422 and nothing is added."""
    changed = service.add_members(session, roster_id, body.member_ids, actor=actor)
    return RosterMembersChanged(
        changed=changed, member_count=service.member_count(session, roster_id)
    )


@router.post("/{roster_id}/members/remove", response_model=RosterMembersChanged)
def remove_roster_members(
    roster_id: uuid.UUID, body: RosterMembersChange, session: SessionDep, actor: Operator
) -> RosterMembersChanged:
    """Remove members by id (ids not in the roster are ignored)."""
    changed = service.remove_members(session, roster_id, body.member_ids, actor=actor)
    return RosterMembersChanged(
        changed=changed, member_count=service.member_count(session, roster_id)
    )


@router.delete("/{roster_id}/members/{member_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_roster_member(
    roster_id: uuid.UUID, member_id: uuid.UUID, session: SessionDep, actor: Operator
) -> Response:
    """Remove one member from the roster (a no-op if they were not in it)."""
    service.remove_members(session, roster_id, [member_id], actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
