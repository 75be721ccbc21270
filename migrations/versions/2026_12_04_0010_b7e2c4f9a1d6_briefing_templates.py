"""Briefing templates and their versions; which template (and version) a declaration and
each briefing version were written from.

Revision ID: b7e2c4f9a1d6
Revises: e4b7d2a9c1f3
Create Date: 2026-12-04 19:50:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.models.base

revision: str = "b7e2c4f9a1d6"
down_revision: str | None = "e4b7d2a9c1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "briefing_templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variables", _json(), nullable=False),
        sa.Column("content", _json(), nullable=False),
        sa.Column("languages", _json(), nullable=False),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_briefing_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_briefing_templates_name")),
    )
    op.create_table(
        "briefing_template_versions",
        sa.Column("template_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("variables", _json(), nullable=False),
        sa.Column("content", _json(), nullable=False),
        sa.Column("languages", _json(), nullable=False),
        sa.Column("created_by_key_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["briefing_templates.id"],
            name=op.f("fk_briefing_template_versions_template_id_briefing_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "template_id", "version", name=op.f("pk_briefing_template_versions")
        ),
    )
    for table in ("incidents", "briefings"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("template_id", sa.Uuid(), nullable=True))
            batch.add_column(sa.Column("template_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("briefings", "incidents"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("template_version")
            batch.drop_column("template_id")
    op.drop_table("briefing_template_versions")
    op.drop_table("briefing_templates")
