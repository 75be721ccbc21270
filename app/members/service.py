"""Business rules for members: validation that needs settings, uniqueness, secrets, queries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.audit.service import record
from app.db import contains_pattern
from app.errors import Conflict, FieldProblem, InvalidInput, NotFound
from app.members.schemas import Consent, MemberCreate, MemberFilters, MemberUpdate, QuietHours
from app.models import Member
from app.netguard import UnsafeURL, check_webhook_url
from app.principal import Principal
from app.security import SecretBox, new_webhook_secret


@dataclass(frozen=True)
class MemberPolicy:
    """What member validation needs from the settings."""

    allow_private_webhooks: bool
    secret_box: SecretBox


def validate_webhook_url(url: str, policy: MemberPolicy, field: str = "body.webhook_url") -> str:
    try:
        return check_webhook_url(url, allow_private=policy.allow_private_webhooks)
    except UnsafeURL as exc:
        raise InvalidInput(
            f"{field}: {exc}", errors=[FieldProblem(field=field, reason=str(exc))]
        ) from exc


def member_columns(data: MemberCreate) -> dict[str, Any]:
    """The ORM column values of a validated member."""
    values = data.model_dump(exclude={"quiet_hours", "consent"})
    values.update(_quiet_hours_columns(data.quiet_hours))
    values.update(_consent_columns(data.consent))
    return values


def _quiet_hours_columns(quiet_hours: QuietHours | None) -> dict[str, Any]:
    return {
        "quiet_hours_start": quiet_hours.start if quiet_hours else None,
        "quiet_hours_end": quiet_hours.end if quiet_hours else None,
    }


def _consent_columns(consent: Consent) -> dict[str, Any]:
    return {
        "consent_given_at": consent.given_at,
        "consent_method": consent.method,
        "consent_note": consent.note,
    }


def member_out(member: Member) -> dict[str, Any]:
    """The API shape of a member (the ORM row keeps quiet hours and consent flat)."""
    quiet_hours = None
    if member.quiet_hours_start is not None and member.quiet_hours_end is not None:
        quiet_hours = {"start": member.quiet_hours_start, "end": member.quiet_hours_end}
    return {
        **{c: getattr(member, c) for c in _PLAIN_COLUMNS},
        "quiet_hours": quiet_hours,
        "consent": {
            "given_at": member.consent_given_at,
            "method": member.consent_method,
            "note": member.consent_note,
        },
    }


_PLAIN_COLUMNS = (
    "id",
    "network",
    "name",
    "organization",
    "title",
    "country",
    "languages",
    "themes",
    "tags",
    "email",
    "webhook_url",
    "timezone",
    "status",
    "created_at",
    "updated_at",
)


def _ensure_email_free(session: Session, email: str | None, member_id: uuid.UUID | None) -> None:
    if email is None:
        return
    query = select(Member.id).where(Member.email == email)
    if member_id is not None:
        query = query.where(Member.id != member_id)
    if session.scalar(query) is not None:
        raise Conflict(
            "another member already has this email address",
            errors=[FieldProblem(field="body.email", reason="already used by another member")],
        )


def _flush(session: Session) -> None:
    """Flush, turning a unique-email race lost to another request into a 409."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "another member already has this email address",
            errors=[FieldProblem(field="body.email", reason="already used by another member")],
        ) from exc


def create_member(
    session: Session, data: MemberCreate, *, policy: MemberPolicy, actor: Principal
) -> tuple[Member, str | None]:
    """Create a member; returns the new webhook secret (if it has a webhook), shown once."""
    if data.webhook_url is not None:
        validate_webhook_url(data.webhook_url, policy)
    _ensure_email_free(session, data.email, None)
    member = Member(**member_columns(data))
    secret = None
    if data.webhook_url is not None:
        secret = new_webhook_secret()
        member.webhook_secret_encrypted = policy.secret_box.encrypt(secret)
    session.add(member)
    _flush(session)
    record(session, actor, "member.create", "member", member.id, {"network": member.network})
    return member, secret


def get_member(session: Session, member_id: uuid.UUID) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    return member


def update_member(
    session: Session,
    member_id: uuid.UUID,
    data: MemberUpdate,
    *,
    policy: MemberPolicy,
    actor: Principal,
) -> tuple[Member, str | None]:
    """Apply a partial update. A webhook added to a member without one gets a new secret."""
    member = get_member(session, member_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("webhook_url") is not None:
        validate_webhook_url(changes["webhook_url"], policy)
    if "email" in changes:
        _ensure_email_free(session, changes["email"], member.id)
    values: dict[str, Any] = {
        k: v for k, v in changes.items() if k not in ("quiet_hours", "consent")
    }
    if "quiet_hours" in changes:
        values.update(_quiet_hours_columns(data.quiet_hours))
    if data.consent is not None:
        values.update(_consent_columns(data.consent))
    email = values.get("email", member.email)
    webhook_url = values.get("webhook_url", member.webhook_url)
    if email is None and webhook_url is None:
        raise InvalidInput(
            "at least one contact channel is required: email or webhook_url",
            errors=[FieldProblem(field="body", reason="no contact channel would remain")],
        )
    secret = None
    if webhook_url is None:
        values["webhook_secret_encrypted"] = None
    elif member.webhook_secret_encrypted is None:
        secret = new_webhook_secret()
        values["webhook_secret_encrypted"] = policy.secret_box.encrypt(secret)
    for column, value in values.items():
        setattr(member, column, value)
    _flush(session)
    record(session, actor, "member.update", "member", member.id, {"fields": sorted(changes)})
    return member, secret


def delete_member(session: Session, member_id: uuid.UUID, *, actor: Principal) -> None:
    member = get_member(session, member_id)
    session.delete(member)
    session.flush()
    record(session, actor, "member.delete", "member", member_id, {})


def rotate_webhook_secret(
    session: Session, member_id: uuid.UUID, *, policy: MemberPolicy, actor: Principal
) -> str:
    """Replace the member's signing secret; the old one stops working at once."""
    member = get_member(session, member_id)
    if member.webhook_url is None:
        raise Conflict("this member has no webhook, so no signing secret to rotate")
    secret = new_webhook_secret()
    member.webhook_secret_encrypted = policy.secret_box.encrypt(secret)
    session.flush()
    record(session, actor, "member.webhook_secret.rotate", "member", member.id, {})
    return secret


def json_array_contains(
    session: Session, column: InstrumentedAttribute[list[str]], value: str
) -> ColumnElement[bool]:
    """`value` is an element of the JSON array `column`, on PostgreSQL and on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(column, JSONB).contains([value])
    elements = func.json_each(column).table_valued("value")
    return exists().select_from(elements).where(elements.c.value == value)


def json_array_has_language(
    session: Session, column: InstrumentedAttribute[list[str]], language: str
) -> ColumnElement[bool]:
    """The JSON array of language tags has `language` or one of its variants (`fr` → `fr-CA`)."""
    if session.get_bind().dialect.name == "postgresql":
        elements = func.jsonb_array_elements_text(type_coerce(column, JSONB)).table_valued("value")
    else:
        elements = func.json_each(column).table_valued("value")
    value = elements.c.value
    variants = value.like(language.replace("%", "").replace("_", "") + "-%")
    return exists().select_from(elements).where(or_(value == language, variants))


def filtered_members(session: Session, filters: MemberFilters) -> Select[Member]:
    query = select(Member)
    if filters.network:
        query = query.where(Member.network == filters.network)
    if filters.status:
        query = query.where(Member.status == filters.status)
    if filters.country:
        query = query.where(Member.country == filters.country)
    if filters.language:
        query = query.where(json_array_contains(session, Member.languages, filters.language))
    if filters.theme:
        query = query.where(json_array_contains(session, Member.themes, filters.theme))
    if filters.tag:
        query = query.where(json_array_contains(session, Member.tags, filters.tag))
    if filters.q:
        pattern = contains_pattern(filters.q)
        query = query.where(
            or_(
                *(
                    func.lower(column).like(pattern, escape="\\")
                    for column in (Member.name, Member.organization, Member.title, Member.email)
                )
            )
        )
    return query


def list_members(
    session: Session, filters: MemberFilters, *, limit: int, after: uuid.UUID | None
) -> list[Member]:
    """Members in creation order; `limit + 1` rows so the caller can see if more remain."""
    query = filtered_members(session, filters).order_by(Member.id).limit(limit + 1)
    if after is not None:
        query = query.where(Member.id > after)
    return list(session.scalars(query))


def iter_members(session: Session, filters: MemberFilters) -> Iterator[Member]:
    """Every matching member, streamed in id order (for the CSV export)."""
    query = filtered_members(session, filters).order_by(Member.id)
    yield from session.scalars(query.execution_options(yield_per=1000))
