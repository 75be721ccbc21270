from __future__ import annotations

import uuid
from datetime import datetime, time

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, Time, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONList, UTCDateTime, utcnow, uuid7
from app.vocabulary import MemberStatus


class Member(Base):
    """A personality or an editor of the network, with how and when to reach them."""

    __tablename__ = "members"
    __table_args__ = (
        Index("ix_members_network_status", "network", "status"),
        Index("ix_members_country", "country"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    network: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    organization: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    languages: Mapped[list[str]] = mapped_column(JSONList)
    themes: Mapped[list[str]] = mapped_column(JSONList)
    tags: Mapped[list[str]] = mapped_column(JSONList)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # Fernet token of the `whsec_` secret: recoverable to sign, useless without RRMM_SECRET_KEY.
    webhook_secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Set when the receiver answered 410 Gone: no more webhooks until the URL changes.
    webhook_disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    quiet_hours_start: Mapped[time | None] = mapped_column(Time)
    quiet_hours_end: Mapped[time | None] = mapped_column(Time)
    status: Mapped[str] = mapped_column(String(16), default=MemberStatus.ACTIVE)
    consent_given_at: Mapped[datetime] = mapped_column(UTCDateTime)
    consent_method: Mapped[str] = mapped_column(String(32))
    consent_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Roster(Base):
    """A named group of members, such as "Editors — Maghreb"."""

    __tablename__ = "rosters"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RosterMember(Base):
    __tablename__ = "roster_members"
    __table_args__ = (Index("ix_roster_members_member_id", "member_id"),)

    roster_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("rosters.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("members.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = ["Member", "Roster", "RosterMember"]
