from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.fields import Name, Text

if TYPE_CHECKING:
    from app.models import Roster as RosterRow

Description = Annotated[Text, StringConstraints(max_length=2000)]


class RosterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(examples=["Editors — Maghreb"])
    description: Description | None = None


class RosterUpdate(BaseModel):
    """Fields to change; `description: null` clears the description."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _name_not_null(self) -> Self:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null")
        return self


class Roster(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    member_count: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, roster: RosterRow, *, member_count: int) -> Self:
        return cls(
            id=roster.id,
            name=roster.name,
            description=roster.description,
            member_count=member_count,
            created_at=roster.created_at,
            updated_at=roster.updated_at,
        )


class RosterMembersChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=10_000)


class RosterMembersChanged(BaseModel):
    changed: int = Field(description="How many members were actually added or removed.")
    member_count: int
