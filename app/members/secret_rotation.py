"""Re-encrypting the stored webhook signing secrets under the current RRMM_SECRET_KEY, so that
RRMM_SECRET_KEY_PREVIOUS can be dropped (`rrmm secrets rotate`).

The members' `webhook_secret_encrypted` is the only encrypted column (API keys are hashed,
ack tokens are signed, not stored)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app.audit.service import record
from app.models import Member
from app.principal import Principal
from app.security import SecretBox


@dataclass
class RotationBatch:
    """What one batch did; `last_id` is where the next batch starts (None: no more rows)."""

    last_id: uuid.UUID | None
    scanned: int = 0
    rotated: int = 0
    unreadable: list[uuid.UUID] = field(default_factory=list)


def rotate_webhook_secrets(
    session: Session, *, box: SecretBox, after: uuid.UUID | None, limit: int, actor: Principal
) -> RotationBatch:
    """Re-encrypt under the current key the next `limit` secrets (by member id, after
    `after`) that are not already under it. Idempotent: a secret already under the current
    key is left as it is, so a second run rotates nothing.

    Each row is written only if it still holds the ciphertext that was read: a secret that
    the API changed meanwhile (already under the current key) is never overwritten."""
    query = (
        select(Member.id, Member.webhook_secret_encrypted)
        .where(Member.webhook_secret_encrypted.is_not(None))
        .order_by(Member.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Member.id > after)
    rows = session.execute(query).all()
    batch = RotationBatch(last_id=rows[-1].id if len(rows) == limit else None, scanned=len(rows))
    for member_id, token in rows:
        assert token is not None  # filtered above
        if box.is_current(token):
            continue
        try:
            rotated = box.rotate(token)
        except ValueError:
            batch.unreadable.append(member_id)
            continue
        result = session.execute(
            update(Member)
            .where(Member.id == member_id, Member.webhook_secret_encrypted == token)
            # Not an edit of the member: its `updated_at` stays.
            .values(webhook_secret_encrypted=rotated, updated_at=Member.updated_at)
            .execution_options(synchronize_session=False)
        )
        batch.rotated += cast(CursorResult[Any], result).rowcount
    if batch.rotated:
        record(
            session,
            actor,
            "secrets.rotate",
            "member",
            None,
            {"field": "webhook_secret", "re_encrypted": batch.rotated},
        )
    return batch
