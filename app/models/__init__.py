"""All ORM models; Alembic's env imports this module to see the whole schema."""

from app.models.ack import (
    Ack,
    AnswerCounter,
    AnswerDelayCounter,
    CurrentAck,
    IncidentTimer,
    QuotaCounter,
)
from app.models.api_key import ApiKey, Role
from app.models.audit import AuditEntry
from app.models.base import Base
from app.models.incident import (
    Briefing,
    BriefingTargeting,
    Delivery,
    DeliveryCounter,
    Incident,
    IncidentEvent,
    IncidentTarget,
    ReferenceCounter,
)
from app.models.member import Member, Roster, RosterMember
from app.models.notice import OperatorNotice
from app.models.person import ConsoleSession, Person
from app.models.template import BriefingTemplate, BriefingTemplateVersion
from app.models.worker import WorkerHeartbeat

__all__ = [
    "Ack",
    "AnswerCounter",
    "AnswerDelayCounter",
    "ApiKey",
    "AuditEntry",
    "Base",
    "Briefing",
    "BriefingTargeting",
    "BriefingTemplate",
    "BriefingTemplateVersion",
    "ConsoleSession",
    "CurrentAck",
    "Delivery",
    "DeliveryCounter",
    "Incident",
    "IncidentEvent",
    "IncidentTarget",
    "IncidentTimer",
    "Member",
    "OperatorNotice",
    "Person",
    "QuotaCounter",
    "ReferenceCounter",
    "Role",
    "Roster",
    "RosterMember",
    "WorkerHeartbeat",
]
