"""People who use the console, and their server-side sessions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONList, UTCDateTime, utcnow, uuid7


class Person(Base):
    """Somebody who signs in to the console: an email, a role, an Argon2id password hash
    and a TOTP secret (encrypted at rest), with hashed one-time recovery codes."""

    __tablename__ = "people"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    # Lower-cased: one person per address, however it is typed.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(8), default="en")
    # invited (set-up link not used yet) | active | disabled
    status: Mapped[str] = mapped_column(String(16), default="invited")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    recovery_code_hashes: Mapped[list[str]] = mapped_column(JSONList, default=list)
    # The TOTP time step of the last code accepted at sign-in: a code is good once.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    # The one-time set-up link: its SHA-256 and when it stops working.
    setup_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    setup_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Lockout with backoff after failed sign-ins.
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsoleSession(Base):
    """A signed-in browser. The cookie holds an opaque random id; this row holds its SHA-256
    (a copy of the table opens no session) and the form token (CSRF) of the session."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_person_id", "person_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("people.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Absolute end, whatever the activity (RRMM_CONSOLE_SESSION_HOURS).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    address: Mapped[str | None] = mapped_column(String(64))


__all__ = ["ConsoleSession", "Person"]
