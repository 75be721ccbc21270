"""The audit trail, for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEntry
from app.deps import Admin, SessionDep
from app.fields import Line
from app.pagination import DEFAULT_LIMIT, Page, decode_int_cursor, next_cursor

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEntry])
def list_audit_entries(
    session: SessionDep,
    _admin: Admin,
    action: Annotated[Line | None, Query(examples=["member.create"])] = None,
    object_type: Annotated[Line | None, Query(examples=["member"])] = None,
    object_id: Annotated[Line | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Every write made by an operator, an admin or the CLI, newest first: who (key id and
    name), what, on which object, when, and the request id. Holds no contact details."""
    rows = service.list_entries(
        session,
        limit=limit,
        before_id=decode_int_cursor(cursor),
        action=action,
        object_type=object_type,
        object_id=object_id,
    )
    items = rows[:limit]
    return {
        "items": items,
        "next_cursor": next_cursor(rows, limit, items[-1].id if items else None),
    }
