"""The two-person rule: a pending declaration's expiry, who decided it and when, and a
rejection's reason.

Revision ID: e4b7d2a9c1f3
Revises: c3f1a9d2e7b4
Create Date: 2026-12-02 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "e4b7d2a9c1f3"
down_revision: str | None = "c3f1a9d2e7b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(
            sa.Column(
                "approval_expires_at", app.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch.add_column(sa.Column("decided_by_key_id", sa.Uuid(), nullable=True))
        batch.add_column(
            sa.Column("decided_at", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("rejection_reason", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("rejection_reason")
        batch.drop_column("decided_at")
        batch.drop_column("decided_by_key_id")
        batch.drop_column("approval_expires_at")
