from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, JSONList, UTCDateTime, utcnow, uuid7
from app.vocabulary import IncidentStatus


class Incident(Base):
    """A tension incident: what is happening, who is targeted, and where it stands."""

    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("created_by_key_id", "idempotency_key"),
        Index("ix_incidents_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    urgency: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    countries: Mapped[list[str]] = mapped_column(JSONList)
    themes: Mapped[list[str]] = mapped_column(JSONList)
    audience: Mapped[dict[str, Any]] = mapped_column(JSONList)
    channels: Mapped[list[str]] = mapped_column(JSONList)
    responses: Mapped[list[str]] = mapped_column(JSONList)
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.MOBILIZING)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    declared_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Follow-up of the answers: see app/incidents/followup.py.
    ack_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    followup: Mapped[dict[str, Any]] = mapped_column(JSONList, default=dict)
    # The two-person rule: a pending declaration expires at `approval_expires_at`; who
    # approved it (or rejected it, with the reason) and when.
    approval_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The people behind the declaration and the decision, when made in the console.
    created_by_person_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    decided_by_person_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rejection_reason: Mapped[str | None] = mapped_column(String(1000))
    # The briefing template the declaration was written from, and its version (no foreign
    # key: deleting a template leaves the record of what was used).
    template_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    template_version: Mapped[int | None] = mapped_column(Integer)
    # Members targeted so far, kept with `incident_targets` so status reads need no COUNT.
    targeted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The last sequence number given to this incident's timeline events and answers. The
    # row lock of the UPDATE that takes the next number is held until commit, so numbers
    # become visible in order: a reader that has seen N has seen everything before N.
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ReferenceCounter(Base):
    """The last number handed out per year, for references like RRMM-2026-0007."""

    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(Integer)


class IncidentTarget(Base):
    """A member targeted by an incident (at declaration, or newly matching an update)."""

    __tablename__ = "incident_targets"

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Briefing(Base):
    """One version of an incident's message: the declaration, an update, the stand-down or
    the cancellation, with one entry per language."""

    __tablename__ = "briefings"
    __table_args__ = (UniqueConstraint("incident_id", "version"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    # Languages in the operator's order (JSONB does not keep object key order).
    languages: Mapped[list[str]] = mapped_column(JSONList)
    content: Mapped[dict[str, Any]] = mapped_column(JSONList)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when a newer version replaced this one: its rows are never claimed again.
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The template (and its version) this version was written from, if any.
    template_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    template_version: Mapped[int | None] = mapped_column(Integer)


class BriefingTargeting(Base):
    """Who a declared or updated version goes to, written in member-id chunks: the request
    writes the first chunk and answers; the worker writes the rest right after commit, and
    the sweeper resumes a job whose worker died (`touched_at` stale). A chunk's targets,
    ledger rows, counters and the cursor move in one transaction, so a chunk is written
    once however often the job is resumed."""

    __tablename__ = "briefing_targeting"
    __table_args__ = (Index("ix_briefing_targeting_pending", "finished_at", "touched_at"),)

    briefing_id: Mapped[int] = mapped_column(
        ForeignKey("briefings.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    # The last member id written: the next chunk starts after it (NULL: none yet).
    after_member_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Members the version goes to, counted when it was written, and how many are done.
    members_total: Mapped[int] = mapped_column(Integer, default=0)
    members_done: Mapped[int] = mapped_column(Integer, default=0)
    # Newly targeted members: counted into `incidents.targeted` up front (the request
    # answers with the number), corrected by the difference when the last chunk is written.
    targets_expected: Mapped[int] = mapped_column(Integer, default=0)
    targets_added: Mapped[int] = mapped_column(Integer, default=0)
    # Ledger rows written so far.
    rows_written: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Delivery(Base):
    """The ledger: one row per (briefing version, member, channel).

    `pending → sending → sent`, or `→ retrying → … → failed`, or `skipped` / `cancelled`
    / `superseded`. A sender claims a row (status `sending`, `attempts + 1`, `lease_until`)
    before any I/O and writes the outcome only if the row is still `sending` with its
    attempt number; a live sender renews its leases, so a dead one's rows are taken over as
    soon as they run out.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("briefing_id", "member_id", "channel"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_incident_id_status", "incident_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    briefing_id: Mapped[int] = mapped_column(ForeignKey("briefings.id", ondelete="CASCADE"))
    # NULL once the member is deleted: the ledger keeps its history without the person.
    member_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("members.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    language: Mapped[str] = mapped_column(String(35))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How often the row was queued without being claimed since: the sweeper waits twice as
    # long each time before it counts the broker's message as lost again.
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryCounter(Base):
    """Deliveries per (incident, channel, status), kept in step with the ledger in the same
    transactions, so a dashboard's poll costs the same for 10 members as for 100,000."""

    __tablename__ = "delivery_counters"

    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IncidentEvent(Base):
    """One step of an incident's timeline (declared, fan-out started and finished, update,
    reminder, escalation, quota met, operators notified, resolved or cancelled), written in
    the transaction of the step itself. `seq` orders it with the incident's answers, for
    the events stream's `Last-Event-ID`."""

    __tablename__ = "incident_events"
    __table_args__ = (
        UniqueConstraint("incident_id", "seq", name="uq_incident_events_incident_id_seq"),
        # At most one fan-out start and one finish per briefing version.
        UniqueConstraint("incident_id", "dedupe_key", name="uq_incident_events_dedupe_key"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The API key's name for a person's action; None for the system (sweeper, timers).
    actor: Mapped[str | None] = mapped_column(String(100))
    briefing_version: Mapped[int | None] = mapped_column(Integer)
    # Counts and short outcomes only: never a contact detail, a name or briefing text.
    detail: Mapped[dict[str, Any]] = mapped_column(JSONList, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(64))
