from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, UTCDateTime, utcnow


class Ack(Base):
    """One answer of a member to an incident, as given (the history; never updated)."""

    __tablename__ = "acks"
    __table_args__ = (Index("ix_acks_incident_id_member_id", "incident_id", "member_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    member_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("members.id", ondelete="SET NULL")
    )
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    response: Mapped[str] = mapped_column(String(40))
    comment: Mapped[str | None] = mapped_column(Text)
    route: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(16))
    briefing_version: Mapped[int] = mapped_column(Integer)
    language: Mapped[str] = mapped_column(String(35))
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delay_seconds: Mapped[float | None] = mapped_column(Float)
    late: Mapped[bool] = mapped_column(Boolean, default=False)


class CurrentAck(Base):
    """A member's current answer to an incident: the latest of their `acks`."""

    __tablename__ = "current_acks"
    __table_args__ = (Index("ix_current_acks_incident_id_response", "incident_id", "response"),)

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    ack_id: Mapped[int] = mapped_column(ForeignKey("acks.id", ondelete="CASCADE"))
    response: Mapped[str] = mapped_column(String(40))
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_answered_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IncidentTimer(Base):
    """A deadline of an incident (a reminder round, the escalation, the ack deadline),
    kept as a row that beat's sweep fires once: nothing is lost to a restart."""

    __tablename__ = "incident_timers"
    __table_args__ = (Index("ix_incident_timers_due_at", "done_at", "due_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(Integer, default=1)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(200))
