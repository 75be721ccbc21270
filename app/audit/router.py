"""The audit trail, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEntry
from app.deps import Admin, SessionDep
from app.fields import Line
from app.pagination import Page, PageDep, page

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEntry])
def list_audit_entries(
    session: SessionDep,
    _admin: Admin,
    pages: PageDep,
    action: Annotated[Line | None, Query(examples=["member.create"])] = None,
    object_type: Annotated[Line | None, Query(examples=["member"])] = None,
    object_id: Annotated[Line | None, Query()] = None,
) -> Page[AuditEntry]:
    """Every write made by an operator, an admin or the CLI, newest first: who (key id and
    name), what, on which object, when, and the request id. Holds no contact details."""
    rows = service.list_entries(
        session,
        limit=pages.limit,
        before_id=pages.after_int(),
        action=action,
        object_type=object_type,
        object_id=object_id,
    )
    return page(
        rows,
        pages.limit,
        key=lambda e: e.id,
        view=lambda entries: [AuditEntry.model_validate(e) for e in entries],
    )
