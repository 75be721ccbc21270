"""Briefing templates: pre-approved, pre-translated wording an operator declares from."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONList, UTCDateTime, utcnow, uuid7


class BriefingTemplate(Base):
    """A named template at its latest version; every version is kept in
    `briefing_template_versions`, so a declaration can name the one it was approved with."""

    __tablename__ = "briefing_templates"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # [{"name", "description", "required"}], in the operator's order.
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSONList)
    # {"en": {"subject", "body", "talking_points"}}: Jinja2 source, rendered sandboxed.
    content: Mapped[dict[str, Any]] = mapped_column(JSONList)
    languages: Mapped[list[str]] = mapped_column(JSONList)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BriefingTemplateVersion(Base):
    """One version of a template, as it was: written with every change, never edited."""

    __tablename__ = "briefing_template_versions"

    template_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("briefing_templates.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSONList)
    content: Mapped[dict[str, Any]] = mapped_column(JSONList)
    languages: Mapped[list[str]] = mapped_column(JSONList)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = ["BriefingTemplate", "BriefingTemplateVersion"]
