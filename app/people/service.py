"""People of the console: invited by a one-time set-up link, signed in with an Argon2id
password and a TOTP code (or a one-time recovery code), kept in server-side sessions.

Secrets at rest: the password as an Argon2id hash, the TOTP secret encrypted (like webhook
secrets, under its own key derived from RRMM_SECRET_KEY), recovery codes, set-up links and
session ids as SHA-256 digests (each is 80+ random bits: a fast digest is enough, and a copy
of the database opens nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.errors import Conflict, FieldProblem, InvalidInput, NotFound
from app.models import ConsoleSession, Person, Role
from app.models.base import utcnow
from app.principal import Principal
from app.security import SecretBox

TOTP_PURPOSE = "rrmm console totp secrets v1"
SETUP_LINK_LIFETIME = timedelta(hours=24)
RECOVERY_CODES = 10
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 200
# After this many failed sign-ins in a row the account waits 1 minute, then 2, 4, … up to
# an hour, before it accepts a sign-in again (even a correct one).
LOCK_AFTER_FAILURES = 5
MAX_LOCK = timedelta(hours=1)
# A session's `last_seen_at` is written at most this often (not on every request).
TOUCH_EVERY = timedelta(seconds=60)
LANGUAGES = ("en", "fr", "ar")

_HASHER = PasswordHasher()  # Argon2id, argon2-cffi's defaults (RFC 9106's second profile)


@cache
def _dummy_hash() -> str:
    """Verified when the email is unknown, so that an unknown address takes as long as a
    known one (made on first use: hashing costs tens of milliseconds)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(email: str) -> str:
    return email.strip().lower()


def principal(person: Person) -> Principal:
    """The person as the audit trail and the service functions name them."""
    return Principal(key_id=None, name=person.email, role=Role(person.role), person_id=person.id)


# ------------------------------------------------------------------------- invitations


@dataclass(frozen=True)
class SetupLink:
    person: Person
    token: str
    expires_at: datetime


def _new_setup_link(person: Person, now: datetime) -> SetupLink:
    token = secrets.token_urlsafe(32)
    person.setup_token_hash = digest(token)
    person.setup_expires_at = now + SETUP_LINK_LIFETIME
    return SetupLink(person, token, person.setup_expires_at)


def create_person(
    session: Session,
    *,
    email: str,
    name: str,
    role: Role,
    language: str = "en",
    actor: Principal,
    now: datetime | None = None,
) -> SetupLink:
    """Invite a person: a row without password, and a set-up link valid for 24 hours."""
    now = now or utcnow()
    email = normalise_email(email)
    if "@" not in email or len(email) > 320:
        raise InvalidInput.at("email", "not an email address")
    if not name.strip() or len(name) > 200:
        raise InvalidInput.at("name", "1 to 200 characters")
    if language not in LANGUAGES:
        raise InvalidInput.at("language", f"one of {', '.join(LANGUAGES)}")
    person = Person(email=email, name=name.strip(), role=role.value, language=language)
    link = _new_setup_link(person, now)
    session.add(person)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "a person with this email already exists",
            errors=[FieldProblem(field="email", reason="already used by another person")],
        ) from exc
    record(session, actor, "person.create", "person", person.id, {"role": role.value})
    return link


def get_person(session: Session, email: str) -> Person:
    person = session.scalar(select(Person).where(Person.email == normalise_email(email)))
    if person is None:
        raise NotFound(f"no person {normalise_email(email)}")
    return person


def list_people(session: Session) -> list[Person]:
    return list(session.scalars(select(Person).order_by(Person.email)))


def reset_person(
    session: Session, email: str, *, actor: Principal, now: datetime | None = None
) -> SetupLink:
    """Forget the password, the second factor and the recovery codes, sign the person out
    everywhere and issue a new set-up link (a lost phone, a forgotten password)."""
    person = get_person(session, email)
    person.password_hash = None
    person.totp_secret = None
    person.totp_last_step = None
    person.recovery_code_hashes = []
    person.status = "invited"
    person.failed_sign_ins = 0
    person.locked_until = None
    close_all_sessions(session, person.id)
    link = _new_setup_link(person, now or utcnow())
    record(session, actor, "person.reset", "person", person.id, {})
    return link


def disable_person(session: Session, email: str, *, actor: Principal) -> Person:
    """No more sign-ins; every open session ends now."""
    person = get_person(session, email)
    person.status = "disabled"
    person.setup_token_hash = None
    close_all_sessions(session, person.id)
    record(session, actor, "person.disable", "person", person.id, {})
    return person


# ------------------------------------------------------------------------------- set-up


def person_for_setup(session: Session, token: str, now: datetime | None = None) -> Person | None:
    """The invited person a set-up link is for, while it is valid."""
    if not token or len(token) > 200:
        return None
    person = session.scalar(select(Person).where(Person.setup_token_hash == digest(token)))
    if person is None or person.status == "disabled" or person.setup_expires_at is None:
        return None
    if person.setup_expires_at <= (now or utcnow()):
        return None
    return person


def totp_box(secret_key: str, previous_key: str | None = None) -> SecretBox:
    return SecretBox(secret_key, TOTP_PURPOSE, previous_key=previous_key)


def setup_totp_secret(session: Session, person: Person, box: SecretBox) -> str:
    """The TOTP secret the person enrols: made once per set-up link and kept (encrypted),
    so reloading the page shows the same QR code."""
    if person.totp_secret is None:
        person.totp_secret = box.encrypt(pyotp.random_base32())
        session.flush()
    return box.decrypt(person.totp_secret)


def provisioning_uri(person: Person, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=person.email, issuer_name="RRMM")


def check_new_password(password: str, confirmation: str, email: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput.at("password", f"at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput.at("password", f"at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == email.lower():
        raise InvalidInput.at("password", "must not be your email address")
    if not hmac.compare_digest(password.encode(), confirmation.encode()):
        raise InvalidInput.at("confirmation", "does not match the password")


def _recovery_code() -> str:
    raw = secrets.token_hex(5)  # 40 bits each; ten of them, each usable once
    return f"{raw[:5]}-{raw[5:]}"


def complete_setup(
    session: Session,
    person: Person,
    *,
    password: str,
    confirmation: str,
    code: str,
    box: SecretBox,
    second_factor_required: bool,
) -> list[str]:
    """Set the password and enrol the second factor; the recovery codes, shown once.

    Without a code, in the embedded mode only, the person signs in with a password alone."""
    check_new_password(password, confirmation, person.email)
    code = code.strip().replace(" ", "")
    if code:
        secret = setup_totp_secret(session, person, box)
        if not pyotp.TOTP(secret).verify(code, valid_window=1):
            raise InvalidInput.at("code", "not the code your authenticator app shows now")
    elif second_factor_required:
        raise InvalidInput.at("code", "required: scan the QR code and type the code it shows")
    else:
        person.totp_secret = None
    codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
    person.password_hash = _HASHER.hash(password)
    person.recovery_code_hashes = [digest(c) for c in codes]
    person.status = "active"
    person.setup_token_hash = None
    person.setup_expires_at = None
    session.flush()
    record(
        session,
        principal(person),
        "person.setup",
        "person",
        person.id,
        {"second_factor": person.totp_secret is not None},
    )
    return codes


# ------------------------------------------------------------------------------ sign-in


class SignInRefused(Exception):
    """Email, password or code not recognised, or the account waits after failures. The
    page says the same in every case but the wait, so it tells nobody which part was wrong."""

    def __init__(self, locked_until: datetime | None = None) -> None:
        super().__init__("sign-in refused")
        self.locked_until = locked_until


def _totp_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step (of the previous, current or next 30 s) whose code this is, if any."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _second_factor_ok(person: Person, code: str, box: SecretBox, now: datetime) -> bool:
    code = code.strip().replace(" ", "").lower()
    if person.totp_secret is None:
        return True
    if not code:
        return False
    if code.isdigit():
        step = _totp_step(box.decrypt(person.totp_secret), code, now)
        # Each code signs in once: one seen (or overheard) cannot be replayed within its 30 s.
        if step is not None and (person.totp_last_step is None or step > person.totp_last_step):
            person.totp_last_step = step
            return True
    # A recovery code, used once.
    spent = digest(code)
    if spent in person.recovery_code_hashes:
        person.recovery_code_hashes = [h for h in person.recovery_code_hashes if h != spent]
        return True
    return False


def sign_in(
    session: Session,
    *,
    email: str,
    password: str,
    code: str,
    box: SecretBox,
    now: datetime | None = None,
) -> Person:
    """The person these credentials are; SignInRefused otherwise. Failures are counted on
    the account (the lockout) whether or not the password was the wrong part."""
    now = now or utcnow()
    person = session.scalar(select(Person).where(Person.email == normalise_email(email)))
    if person is None or person.password_hash is None or person.status != "active":
        _verify(_dummy_hash(), password)
        raise SignInRefused()
    if person.locked_until is not None and person.locked_until > now:
        raise SignInRefused(person.locked_until)
    if not (_verify(person.password_hash, password) and _second_factor_ok(person, code, box, now)):
        person.failed_sign_ins += 1
        if person.failed_sign_ins >= LOCK_AFTER_FAILURES:
            # The exponent capped: a count that keeps growing must not overflow timedelta.
            doublings = min(person.failed_sign_ins - LOCK_AFTER_FAILURES, 6)
            person.locked_until = now + min(timedelta(minutes=2**doublings), MAX_LOCK)
        record(session, principal(person), "person.sign_in_failed", "person", person.id, {})
        raise SignInRefused(person.locked_until)
    person.failed_sign_ins = 0
    person.locked_until = None
    person.last_sign_in_at = now
    if _HASHER.check_needs_rehash(person.password_hash):
        person.password_hash = _HASHER.hash(password)
    record(session, principal(person), "person.sign_in", "person", person.id, {})
    return person


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# ----------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta


def open_session(
    session: Session,
    person: Person,
    *,
    policy: SessionPolicy,
    address: str | None,
    now: datetime | None = None,
) -> tuple[str, ConsoleSession]:
    """A new session (a new id at every sign-in: no fixation) and the cookie value."""
    now = now or utcnow()
    cookie = secrets.token_urlsafe(32)
    row = ConsoleSession(
        id_hash=digest(cookie),
        person_id=person.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + policy.absolute,
        address=address,
    )
    session.add(row)
    session.flush()
    return cookie, row


def session_for(
    session: Session, cookie: str | None, *, policy: SessionPolicy, now: datetime | None = None
) -> tuple[ConsoleSession, Person] | None:
    """The live session behind a cookie and its person; None (and the row gone) once it is
    idle too long, past its absolute end, or its person is disabled."""
    if not cookie or len(cookie) > 200:
        return None
    now = now or utcnow()
    row = session.get(ConsoleSession, digest(cookie))
    if row is None:
        return None
    person = session.get(Person, row.person_id)
    ended = row.expires_at <= now or row.last_seen_at + policy.idle <= now
    if ended or person is None or person.status != "active":
        session.delete(row)
        session.flush()
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return row, person


def close_session(session: Session, cookie: str | None) -> None:
    if cookie:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == digest(cookie)))


def close_all_sessions(session: Session, person_id: uuid.UUID) -> int:
    result = session.execute(delete(ConsoleSession).where(ConsoleSession.person_id == person_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
