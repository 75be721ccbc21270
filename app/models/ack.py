from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, UTCDateTime, utcnow


class Ack(Base):
    """One answer of a member to an incident, as given (the history; never updated)."""

    __tablename__ = "acks"
    __table_args__ = (
        Index("ix_acks_incident_id_member_id", "incident_id", "member_id"),
        Index("ix_acks_incident_id_event_seq", "incident_id", "event_seq"),
    )

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
    # The incident's event sequence number (see Incident.event_seq): orders answers with
    # the timeline in the events stream.
    event_seq: Mapped[int | None] = mapped_column(Integer)


class CurrentAck(Base):
    """A member's current answer to an incident: the latest of their `acks`."""

    __tablename__ = "current_acks"
    __table_args__ = (
        Index("ix_current_acks_incident_id_response", "incident_id", "response"),
        # The first answer of an incident is the first entry of this index: O(log n).
        Index("ix_current_acks_incident_id_first_answered_at", "incident_id", "first_answered_at"),
    )

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


class AnswerCounter(Base):
    """Current answers per (incident, response), moved in the transaction that changes a
    member's current answer, so a dashboard's poll needs no COUNT over `current_acks`."""

    __tablename__ = "answer_counters"

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    response: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AnswerDelayCounter(Base):
    """A histogram of first answers by delay from the declaration: bucket `b` holds the
    members whose first answer came `2**((b-1)/8)` to `2**(b/8)` seconds in (bucket 0: under
    a second). The median time to answer is read from it at a bounded cost."""

    __tablename__ = "answer_delay_counters"

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer, default=0)


class QuotaCounter(Base):
    """Per quota of an incident: targeted members of its segment and how many of them gave
    a counting answer, kept where targets are added and answers change."""

    __tablename__ = "quota_counters"

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    quota_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    targeted: Mapped[int] = mapped_column(Integer, default=0)
    answered: Mapped[int] = mapped_column(Integer, default=0)
