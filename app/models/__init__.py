"""All ORM models; Alembic's env imports this module to see the whole schema."""

from app.models.api_key import ApiKey, Role
from app.models.audit import AuditEntry
from app.models.base import Base
from app.models.member import Member, Roster, RosterMember
from app.models.worker import WorkerHeartbeat

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Base",
    "Member",
    "Role",
    "Roster",
    "RosterMember",
    "WorkerHeartbeat",
]
