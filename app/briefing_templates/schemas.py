"""The template API's bodies: a template's source, and a declaration's use of one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.fields import LanguageTag, Name, Text

VariableName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Description = Annotated[Text, StringConstraints(max_length=2000)]
# The source may be longer than what it renders to is allowed to be (loops, conditions):
# the rendered briefing is checked against the briefing's own limits.
Source = Annotated[Text, StringConstraints(min_length=1, max_length=20_000)]


class TemplateVariable(BaseModel):
    """A value the operator fills in when declaring, such as `{{ city }}`."""

    model_config = ConfigDict(extra="forbid")

    name: VariableName = Field(examples=["city"])
    description: Annotated[Text, StringConstraints(max_length=500)] | None = None
    required: bool = True


class TemplateEntry(BaseModel):
    """The template in one language: Jinja2 source for each part of the briefing."""

    model_config = ConfigDict(extra="forbid")

    subject: Annotated[Text, StringConstraints(min_length=1, max_length=1000)]
    body: Source
    talking_points: list[Annotated[Text, StringConstraints(min_length=1, max_length=2000)]] = Field(
        default_factory=list, max_length=20
    )


TemplateContent = Annotated[
    dict[LanguageTag, TemplateEntry],
    Field(
        min_length=1,
        max_length=30,
        description='One entry per language: `{"en": {"subject", "body", "talking_points"}}`, '
        "each part Jinja2 source using only the declared variables.",
    ),
]
Variables = Annotated[list[TemplateVariable], Field(max_length=30)]


def _distinct_names(variables: list[TemplateVariable] | None) -> None:
    if variables is None:
        return
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise ValueError("variables: each name once")


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(examples=["Hate speech after a publication"])
    description: Description | None = None
    variables: Variables = Field(default_factory=list)
    content: TemplateContent

    @model_validator(mode="after")
    def _check(self) -> Self:
        _distinct_names(self.variables)
        return self


class TemplateUpdate(BaseModel):
    """Fields to change (every change makes a new version); `description: null` clears it."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None
    variables: Variables | None = None
    content: TemplateContent | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        for field in ("name", "variables", "content"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        _distinct_names(self.variables)
        return self


class BriefingTemplateView(BaseModel):
    """A template at one version."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    version: int = Field(description="Increases with every change.")
    latest_version: int
    variables: list[TemplateVariable]
    languages: list[str]
    content: dict[str, TemplateEntry]
    created_at: datetime
    updated_at: datetime


class TemplateSummary(BaseModel):
    """A template in a list: no wording."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    version: int
    languages: list[str]
    updated_at: datetime


VariableValue = Annotated[str, StringConstraints(max_length=2000)]


class TemplateUse(BaseModel):
    """Write the briefing from a template: its id, the version (default: the latest) and
    a value for each of its variables (strings; an optional one left out renders empty)."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    variables: dict[VariableName, VariableValue] = Field(default_factory=dict, max_length=30)


class TemplateRef(BaseModel):
    """Which template, at which version, a briefing was written from."""

    id: uuid.UUID
    version: int

    @classmethod
    def of(cls, template_id: uuid.UUID | None, version: int | None) -> TemplateRef | None:
        """The reference a row records, if it records one."""
        if template_id is None or version is None:
            return None
        return cls(id=template_id, version=version)
