from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from app.fields import (
    ConsentMethod,
    CountryCode,
    LanguageTag,
    Line,
    LocalTime,
    Name,
    Network,
    Tag,
    Text,
    Theme,
    TimeZoneName,
    UTCDatetime,
)
from app.netguard import MAX_URL_LENGTH
from app.vocabulary import MemberStatus

T = TypeVar("T")


def _unique(values: list[T]) -> list[T]:
    """Drop repeats, keeping the first occurrence (languages are in order of preference)."""
    return list(dict.fromkeys(values))


def _lower_email(value: str) -> str:
    # One person, one address: uniqueness is case-insensitive.
    return value.lower()


Email = Annotated[EmailStr, StringConstraints(max_length=320), AfterValidator(_lower_email)]
WebhookURL = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)]
Languages = Annotated[
    list[LanguageTag], Field(min_length=1, max_length=10), AfterValidator(_unique)
]
Themes = Annotated[list[Theme], Field(max_length=7), AfterValidator(_unique)]
Tags = Annotated[list[Tag], Field(max_length=50), AfterValidator(_unique)]


class QuietHours(BaseModel):
    """Local times (in the member's time zone) between which only urgent briefings go out.

    `start` after `end` spans midnight (22:00 → 07:00).
    """

    model_config = ConfigDict(extra="forbid")

    start: LocalTime
    end: LocalTime

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class Consent(BaseModel):
    """When and how the member agreed to be contacted by the mechanism."""

    model_config = ConfigDict(extra="forbid")

    given_at: UTCDatetime
    method: ConsentMethod
    note: Annotated[Text, StringConstraints(max_length=1000)] | None = None


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: Network
    name: Name
    organization: Line | None = None
    title: Line | None = None
    country: CountryCode
    languages: Languages = Field(default_factory=lambda: ["en"])
    themes: Themes = Field(default_factory=list)
    tags: Tags = Field(default_factory=list)
    email: Email | None = None
    webhook_url: WebhookURL | None = None
    timezone: TimeZoneName = "UTC"
    quiet_hours: QuietHours | None = None
    status: MemberStatus = MemberStatus.ACTIVE
    consent: Consent

    @model_validator(mode="after")
    def _one_channel(self) -> Self:
        if self.email is None and self.webhook_url is None:
            raise ValueError("at least one contact channel is required: email or webhook_url")
        return self


class MemberUpdate(BaseModel):
    """Fields to change; `null` clears an optional field (at least one channel must remain)."""

    model_config = ConfigDict(extra="forbid")

    network: Network | None = None
    name: Name | None = None
    organization: Line | None = None
    title: Line | None = None
    country: CountryCode | None = None
    languages: Languages | None = None
    themes: Themes | None = None
    tags: Tags | None = None
    email: Email | None = None
    webhook_url: WebhookURL | None = None
    timezone: TimeZoneName | None = None
    quiet_hours: QuietHours | None = None
    status: MemberStatus | None = None
    consent: Consent | None = None

    @model_validator(mode="after")
    def _required_not_null(self) -> Self:
        clearable = {"organization", "title", "email", "webhook_url", "quiet_hours"}
        for field in self.model_fields_set - clearable:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class Member(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    network: Network
    name: str
    organization: str | None
    title: str | None
    country: str
    languages: list[str]
    themes: list[str]
    tags: list[str]
    email: str | None
    webhook_url: str | None
    timezone: str
    quiet_hours: QuietHours | None
    status: MemberStatus
    consent: Consent
    created_at: datetime
    updated_at: datetime


class MemberWithSecret(Member):
    webhook_secret: str | None = Field(
        None,
        description="The `whsec_` signing secret of the member's webhook. Shown only here, once.",
    )


class WebhookSecret(BaseModel):
    webhook_secret: str = Field(description="The new `whsec_` secret. Shown only once.")


class MemberFilters(BaseModel):
    """Filters shared by the list and the CSV export."""

    network: Network | None = None
    language: LanguageTag | None = None
    theme: Theme | None = None
    country: CountryCode | None = None
    tag: Tag | None = None
    status: MemberStatus | None = None
    q: Annotated[Line, StringConstraints(min_length=1, max_length=200)] | None = None


class ImportedSecret(BaseModel):
    row: int
    member_id: uuid.UUID
    webhook_secret: str


class ImportResult(BaseModel):
    created: int
    updated: int
    skipped: int = Field(description="Invalid rows left out (only with `on_error=skip`).")
    errors: list[ImportRowError] = Field(default_factory=list)
    webhook_secrets: list[ImportedSecret] = Field(
        default_factory=list,
        description="Signing secrets of webhooks created by this import, shown only here.",
    )


class ImportRowError(BaseModel):
    row: int = Field(description="Line number in the file (the header is line 1).")
    field: str
    reason: str


ImportResult.model_rebuild()
