"""API keys: create (shown once), list, revoke, and authenticate a bearer key."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.errors import NotAuthenticated, NotFound
from app.models import ApiKey, Role
from app.models.base import utcnow
from app.principal import Principal
from app.security import hash_api_key, new_api_key


def create_key(session: Session, *, name: str, role: Role, actor: Principal) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is not stored anywhere."""
    plaintext = new_api_key()
    key = ApiKey(
        name=name, role=role.value, key_hash=hash_api_key(plaintext), key_prefix=plaintext[:12]
    )
    session.add(key)
    session.flush()
    record(session, actor, "api_key.create", "api_key", key.id, {"role": role.value})
    return key, plaintext


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, *, key_id: uuid.UUID, actor: Principal) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("no such API key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        record(session, actor, "api_key.revoke", "api_key", key.id, {})
    return key


def authenticate(session: Session, plaintext: str) -> Principal:
    """The principal for a bearer key; 401 for an unknown or revoked key (same answer)."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext)))
    if key is None or key.revoked_at is not None:
        raise NotAuthenticated(
            "invalid or revoked API key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return Principal(key_id=key.id, name=key.name, role=Role(key.role))
