"""Acknowledgements (history and current answers), incident timers and follow-up.

Revision ID: f8e95597496e
Revises: 8c3a15f09b25
Create Date: 2026-11-29 17:28:11.961444
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.models.base

revision: str = "f8e95597496e"
down_revision: str | None = "8c3a15f09b25"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incident_timers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("due_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("done_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_timers_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_timers")),
    )
    with op.batch_alter_table("incident_timers", schema=None) as batch_op:
        batch_op.create_index("ix_incident_timers_due_at", ["done_at", "due_at"], unique=False)

    op.create_table(
        "acks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("member_id", sa.Uuid(), nullable=True),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("response", sa.String(length=40), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("route", sa.String(length=8), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("briefing_version", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=35), nullable=False),
        sa.Column("answered_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delay_seconds", sa.Float(), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_acks_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_acks_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_acks_member_id_members"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acks")),
    )
    with op.batch_alter_table("acks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_acks_incident_id_member_id", ["incident_id", "member_id"], unique=False
        )

    op.create_table(
        "current_acks",
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("member_id", sa.Uuid(), nullable=False),
        sa.Column("ack_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("response", sa.String(length=40), nullable=False),
        sa.Column("answered_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("first_answered_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ack_id"], ["acks.id"], name=op.f("fk_current_acks_ack_id_acks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_current_acks_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_current_acks_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("incident_id", "member_id", name=op.f("pk_current_acks")),
    )
    with op.batch_alter_table("current_acks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_current_acks_incident_id_response", ["incident_id", "response"], unique=False
        )

    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ack_deadline", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "followup",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                # Incidents declared before this revision have no follow-up settings.
                server_default=sa.text("'{}'"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("followup")
        batch_op.drop_column("ack_deadline")

    with op.batch_alter_table("current_acks", schema=None) as batch_op:
        batch_op.drop_index("ix_current_acks_incident_id_response")

    op.drop_table("current_acks")
    with op.batch_alter_table("acks", schema=None) as batch_op:
        batch_op.drop_index("ix_acks_incident_id_member_id")

    op.drop_table("acks")
    with op.batch_alter_table("incident_timers", schema=None) as batch_op:
        batch_op.drop_index("ix_incident_timers_due_at")

    op.drop_table("incident_timers")
