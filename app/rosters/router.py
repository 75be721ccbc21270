"""HTTP routes for rosters and their members."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from app.deps import Operator, SessionDep
from app.members.schemas import Member
from app.members.service import member_out
from app.pagination import DEFAULT_LIMIT, Page, decode_uuid_cursor, next_cursor
from app.rosters import service
from app.rosters.schemas import (
    Roster,
    RosterCreate,
    RosterMembersChange,
    RosterMembersChanged,
    RosterUpdate,
)

router = APIRouter(prefix="/v1/rosters", tags=["rosters"])

LimitQuery = Annotated[int, Query(ge=1, le=500)]
CursorQuery = Annotated[str | None, Query(max_length=200)]


def _out(roster: Any, count: int) -> dict[str, Any]:
    return {
        "id": roster.id,
        "name": roster.name,
        "description": roster.description,
        "member_count": count,
        "created_at": roster.created_at,
        "updated_at": roster.updated_at,
    }


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Roster)
def create_roster(body: RosterCreate, session: SessionDep, actor: Operator) -> dict[str, Any]:
    """Create a named group of members, such as "Editors — Maghreb". Names are unique."""
    return _out(service.create_roster(session, body, actor=actor), 0)


@router.get("", response_model=Page[Roster])
def list_rosters(
    session: SessionDep,
    _actor: Operator,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """All rosters with their member counts, a page at a time."""
    rows = service.list_rosters(session, limit=limit, after=decode_uuid_cursor(cursor))
    items = rows[:limit]
    counts = service.member_counts(session, [r.id for r in items])
    return {
        "items": [_out(r, counts.get(r.id, 0)) for r in items],
        "next_cursor": next_cursor(rows, limit, str(items[-1].id) if items else None),
    }


@router.get("/{roster_id}", response_model=Roster)
def get_roster(roster_id: uuid.UUID, session: SessionDep, _actor: Operator) -> dict[str, Any]:
    """One roster and how many members it holds."""
    roster = service.get_roster(session, roster_id)
    return _out(roster, service.member_count(session, roster_id))


@router.patch("/{roster_id}", response_model=Roster)
def update_roster(
    roster_id: uuid.UUID, body: RosterUpdate, session: SessionDep, actor: Operator
) -> dict[str, Any]:
    """Rename a roster or change its description."""
    roster = service.update_roster(session, roster_id, body, actor=actor)
    return _out(roster, service.member_count(session, roster_id))


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
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """The members of a roster, a page at a time."""
    rows = service.list_roster_members(
        session, roster_id, limit=limit, after=decode_uuid_cursor(cursor)
    )
    items = rows[:limit]
    return {
        "items": [member_out(m) for m in items],
        "next_cursor": next_cursor(rows, limit, str(items[-1].id) if items else None),
    }


@router.post("/{roster_id}/members", response_model=RosterMembersChanged)
def add_roster_members(
    roster_id: uuid.UUID, body: RosterMembersChange, session: SessionDep, actor: Operator
) -> dict[str, int]:
    """Add members by id. Members already in the roster are left alone; any unknown id is
    a 422 and nothing is added."""
    changed = service.add_members(session, roster_id, body.member_ids, actor=actor)
    return {"changed": changed, "member_count": service.member_count(session, roster_id)}


@router.post("/{roster_id}/members/remove", response_model=RosterMembersChanged)
def remove_roster_members(
    roster_id: uuid.UUID, body: RosterMembersChange, session: SessionDep, actor: Operator
) -> dict[str, int]:
    """Remove members by id (ids not in the roster are ignored)."""
    changed = service.remove_members(session, roster_id, body.member_ids, actor=actor)
    return {"changed": changed, "member_count": service.member_count(session, roster_id)}


@router.delete("/{roster_id}/members/{member_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_roster_member(
    roster_id: uuid.UUID, member_id: uuid.UUID, session: SessionDep, actor: Operator
) -> Response:
    """Remove one member from the roster (a no-op if they were not in it)."""
    service.remove_members(session, roster_id, [member_id], actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
