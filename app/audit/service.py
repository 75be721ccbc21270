"""The audit trail: appended in the same transaction as the write it describes."""

from __future__ import annotations

import uuid
from typing import Any

from asgi_correlation_id import correlation_id
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEntry
from app.principal import Principal


def record(
    session: Session,
    actor: Principal,
    action: str,
    object_type: str,
    object_id: uuid.UUID | str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry. `details` must never hold contact details: field names and counts."""
    session.add(
        AuditEntry(
            actor_key_id=actor.key_id,
            actor=actor.name,
            action=action,
            object_type=object_type,
            object_id=str(object_id) if object_id is not None else None,
            request_id=correlation_id.get(),
            details=details or {},
        )
    )


def list_entries(
    session: Session,
    *,
    limit: int,
    before_id: int | None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
) -> list[AuditEntry]:
    """Newest first; `limit + 1` rows so the caller can tell whether there is another page."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if action:
        query = query.where(AuditEntry.action == action)
    if object_type:
        query = query.where(AuditEntry.object_type == object_type)
    if object_id:
        query = query.where(AuditEntry.object_id == object_id)
    return list(session.scalars(query))
