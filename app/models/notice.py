from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, JSONList, UTCDateTime, utcnow


class OperatorNotice(Base):
    """An email to operators (the deadline passed with quotas unmet), written in the
    transaction that decided it and sent by the worker after commit (app/acks/outbox.py):
    no SMTP conversation ever runs under an incident's lock.

    `pending → sending → sent`, or back to `pending` with a later `next_attempt_at` after a
    failed attempt, or `failed` once the attempts are spent. A send is claimed (compare-and-
    set to `sending`, attempt + 1, lease) before any I/O, like a ledger row."""

    __tablename__ = "operator_notices"
    __table_args__ = (Index("ix_operator_notices_status", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    incident_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    # The timer's sequence, for the timeline's `operators_notified` event.
    sequence: Mapped[int] = mapped_column(Integer, default=1)
    # What the timeline says once it is sent, e.g. "operators notified: 1 quota(s) unmet".
    summary: Mapped[str] = mapped_column(String(200))
    recipients: Mapped[list[str]] = mapped_column(JSONList)
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
