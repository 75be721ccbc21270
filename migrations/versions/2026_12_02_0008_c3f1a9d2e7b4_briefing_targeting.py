"""Declaring in constant time: a declared or updated version's targets and ledger rows are
written in member-id chunks (the request writes the first, the worker the rest), and this
table is the job's durable state: the cursor, the counts, when it last moved and when it
finished. Existing versions were written whole, so they need no row.

Revision ID: c3f1a9d2e7b4
Revises: 5d1e0c2b7a94
Create Date: 2026-12-02 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "c3f1a9d2e7b4"
down_revision: str | None = "5d1e0c2b7a94"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "briefing_targeting",
        sa.Column("briefing_id", app.models.base.BigIntPK, nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("after_member_id", sa.Uuid(), nullable=True),
        sa.Column("members_total", sa.Integer(), nullable=False),
        sa.Column("members_done", sa.Integer(), nullable=False),
        sa.Column("targets_expected", sa.Integer(), nullable=False),
        sa.Column("targets_added", sa.Integer(), nullable=False),
        sa.Column("rows_written", sa.Integer(), nullable=False),
        sa.Column("started_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("touched_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["briefing_id"],
            ["briefings.id"],
            name=op.f("fk_briefing_targeting_briefing_id_briefings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_briefing_targeting_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("briefing_id", name=op.f("pk_briefing_targeting")),
    )
    op.create_index(
        "ix_briefing_targeting_pending", "briefing_targeting", ["finished_at", "touched_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_briefing_targeting_pending", table_name="briefing_targeting")
    op.drop_table("briefing_targeting")
