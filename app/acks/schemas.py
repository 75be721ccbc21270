from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from app.errors import InvalidInput, validation_problems
from app.fields import Text

if TYPE_CHECKING:
    from sqlalchemy import Row

    from app.acks.quotas import QuotaProgress
    from app.models import Ack

Comment = Annotated[Text, StringConstraints(max_length=2000)]
_COMMENT = TypeAdapter(Comment)


def form_comment(value: str) -> str | None:
    """The ack page's comment, held to the same rules as the JSON route's (no control
    characters or NUL, at most 2000 characters); `InvalidInput` naming `comment` if not."""
    try:
        comment = _COMMENT.validate_python(value.strip())
    except ValidationError as exc:
        problems = validation_problems(list(exc.errors()))
        for problem in problems:
            problem.field = "comment"
            problem.reason = problem.reason.removeprefix("Value error, ")
        raise InvalidInput(f"comment: {problems[0].reason}", errors=problems) from None
    return comment or None


class AckCreate(BaseModel):
    """An answer from a newsroom system: the token from the webhook's `ack` block."""

    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    response: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    comment: Comment | None = None


class AckReceipt(BaseModel):
    incident: str = Field(description="The incident's reference.")
    response: str
    answered_at: datetime
    late: bool
    briefing_version: int

    @classmethod
    def from_ack(cls, ack: Ack, *, reference: str) -> Self:
        return cls(
            incident=reference,
            response=ack.response,
            answered_at=ack.answered_at,
            late=ack.late,
            briefing_version=ack.briefing_version,
        )


class AckMember(BaseModel):
    id: uuid.UUID
    name: str
    network: str
    country: str


class AckView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    response: str
    comment: str | None
    route: str
    channel: str
    briefing_version: int
    language: str
    answered_at: datetime
    delay_seconds: float | None
    late: bool


class CurrentAckView(BaseModel):
    member: AckMember
    answer: AckView
    first_answered_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        """A `CurrentAck` with its `Ack` and the member's `name`, `network` and `country`."""
        return cls(
            member=AckMember(
                id=row.CurrentAck.member_id,
                name=row.name,
                network=row.network,
                country=row.country,
            ),
            answer=AckView.model_validate(row.Ack),
            first_answered_at=row.CurrentAck.first_answered_at,
        )


class QuotaView(BaseModel):
    network: str | None
    countries: list[str]
    languages: list[str]
    responses: list[str]
    min: int
    answered: int
    targeted: int
    met: bool

    @classmethod
    def from_progress(cls, progress: QuotaProgress) -> Self:
        quota = progress.quota
        return cls(
            network=quota.get("network"),
            countries=quota.get("countries", []),
            languages=quota.get("languages", []),
            responses=quota["responses"],
            min=quota["min"],
            answered=progress.answered,
            targeted=progress.targeted,
            met=progress.met,
        )
