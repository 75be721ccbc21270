"""Fencing the fan-out: a briefing version remembers when a newer one replaced it (its
rows are never claimed again), and a ledger row counts how often it was queued without
being claimed (the sweeper backs off per row instead of re-queueing every row it cannot
see claimed). Versions of existing incidents that an update followed are marked superseded
at that update's time.

Revision ID: 5d1e0c2b7a94
Revises: 91c7b0537724
Create Date: 2026-12-02 02:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "5d1e0c2b7a94"
down_revision: str | None = "91c7b0537724"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("briefings") as batch:
        batch.add_column(
            sa.Column("superseded_at", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("enqueue_count", sa.Integer(), server_default="0", nullable=False)
        )
    briefings = sa.table(
        "briefings",
        sa.column("id", sa.BigInteger()),
        sa.column("incident_id", sa.Uuid()),
        sa.column("version", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("created_at", app.models.base.UTCDateTime(timezone=True)),
        sa.column("superseded_at", app.models.base.UTCDateTime(timezone=True)),
    )
    newer = briefings.alias("newer")
    first_update_after = (
        sa.select(sa.func.min(newer.c.created_at))
        .where(
            newer.c.incident_id == briefings.c.incident_id,
            newer.c.version > briefings.c.version,
            newer.c.kind == "updated",
        )
        .scalar_subquery()
    )
    op.execute(
        briefings.update()
        .where(briefings.c.kind.in_(("declared", "updated", "reminder", "escalated")))
        .values(superseded_at=first_update_after)
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("enqueue_count")
    with op.batch_alter_table("briefings") as batch:
        batch.drop_column("superseded_at")
