from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.briefing_templates.schemas import TemplateRef, TemplateUse
from app.fields import (
    CountryCode,
    LanguageTag,
    Line,
    Name,
    Network,
    Tag,
    Text,
    Theme,
)
from app.members.schemas import Email
from app.vocabulary import BriefingKind, Channel, DeliveryStatus, IncidentStatus, TimelineEventKind

if TYPE_CHECKING:
    from sqlalchemy import Row

    from app.models import Briefing as BriefingRow
    from app.models import Delivery
    from app.models import Incident as IncidentRow

Severity = Literal["minor", "moderate", "severe", "extreme"]
Urgency = Literal["immediate", "expected", "future"]
Mode = Literal["actual", "exercise"]

DEFAULT_RESPONSES = ["acknowledged", "will_engage", "unavailable", "need_briefing_call"]

ResponseSlug = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
]


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class BriefingEntry(BaseModel):
    """The briefing in one language."""

    model_config = ConfigDict(extra="forbid")

    subject: Name
    body: Annotated[Text, StringConstraints(min_length=1, max_length=20_000)]
    talking_points: list[Annotated[Text, StringConstraints(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=20
    )


Briefing = Annotated[
    dict[LanguageTag, BriefingEntry],
    Field(
        min_length=1,
        max_length=30,
        description='One entry per language: `{"en": {"subject", "body", "talking_points"}}`.',
    ),
]


def _english_if_required(briefing: dict[str, Any] | None, info: ValidationInfo) -> Any:
    if briefing is not None and info.data.get("require_english", True) and "en" not in briefing:
        raise ValueError("an English entry is required (or set require_english to false)")
    return briefing


class BriefingInput(BaseModel):
    """A briefing and whether English must be among its languages (it is the reference)."""

    model_config = ConfigDict(extra="forbid")

    # Before `briefing`: its validator reads this field.
    require_english: bool = Field(
        True, description="English prevails when versions disagree, so it is required unless false."
    )
    briefing: Briefing

    _english = field_validator("briefing")(_english_if_required)


class Audience(BaseModel):
    """Who is targeted: the union of `rosters`, `networks` and `member_ids`, narrowed by
    `countries`, `languages`, `themes` and `tags` (any of each). Only active members."""

    model_config = ConfigDict(extra="forbid")

    rosters: Annotated[list[uuid.UUID], AfterValidator(_unique)] = Field(
        default_factory=list, max_length=100
    )
    networks: Annotated[list[Network], AfterValidator(_unique)] = Field(default_factory=list)
    member_ids: Annotated[list[uuid.UUID], AfterValidator(_unique)] = Field(
        default_factory=list, max_length=10_000
    )
    countries: list[CountryCode] = Field(default_factory=list, max_length=250)
    languages: list[LanguageTag] = Field(default_factory=list, max_length=50)
    themes: list[Theme] = Field(default_factory=list, max_length=7)
    tags: list[Tag] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _some_source(self) -> Self:
        if not (self.rosters or self.networks or self.member_ids):
            raise ValueError("name at least one of rosters, networks or member_ids")
        return self


class Quota(BaseModel):
    """A coverage target: at least `min` members of the segment answered one of `responses`.

    The segment is every targeted member matching `network`, `countries` and `languages`
    (each optional). A segment that meets its quota is no longer reminded or escalated.
    """

    model_config = ConfigDict(extra="forbid")

    network: Network | None = None
    countries: list[CountryCode] = Field(default_factory=list, max_length=250)
    languages: list[LanguageTag] = Field(default_factory=list, max_length=50)
    responses: Annotated[list[ResponseSlug], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["will_engage"], min_length=1, max_length=10
    )
    min: int = Field(ge=1, le=1_000_000)


class FollowUp(BaseModel):
    """How silence is chased: reminders, then escalation, until the acknowledgement deadline."""

    model_config = ConfigDict(extra="forbid")

    ack_deadline_seconds: int = Field(
        7200, ge=1, le=30 * 86400, description="From the declaration to the deadline."
    )
    reminders: int = Field(
        2, ge=0, le=10, description="Reminders to members who have not answered."
    )
    reminder_interval_seconds: int = Field(1800, ge=1, le=7 * 86400)
    escalation_rosters: Annotated[list[uuid.UUID], AfterValidator(_unique)] = Field(
        default_factory=list,
        max_length=20,
        description="The second tier, briefed after the last reminder.",
    )
    quotas: list[Quota] = Field(default_factory=list, max_length=50)
    notify_emails: list[Email] = Field(
        default_factory=list,
        max_length=20,
        description="Operators told when the deadline passes with quotas unmet "
        "(in addition to RRMM_OPERATOR_EMAILS).",
    )


class BriefingSource(BaseModel):
    """A briefing written out (`briefing`), or a template to write it from (`template`):
    one of the two."""

    model_config = ConfigDict(extra="forbid")

    # Before `briefing`: its validator reads these fields.
    require_english: bool = Field(
        True, description="English prevails when versions disagree, so it is required unless false."
    )
    template: TemplateUse | None = Field(
        None, description="Write the briefing from a template (`/v1/templates`) instead."
    )
    briefing: Briefing | None = Field(None, validate_default=True)

    @field_validator("briefing")
    @classmethod
    def _one_source(cls, briefing: dict[str, Any] | None, info: ValidationInfo) -> Any:
        if "template" not in info.data:  # the template is invalid: that is the error to name
            return briefing
        if briefing is None and info.data["template"] is None:
            raise ValueError("a briefing is required (or a template to write it from)")
        if briefing is not None and info.data["template"] is not None:
            raise ValueError("a briefing or a template, not both")
        return _english_if_required(briefing, info)


class _DeclarationFields(BaseModel):
    """What a declaration says besides its briefing."""

    model_config = ConfigDict(extra="forbid")

    title: Name
    severity: Severity
    urgency: Urgency
    mode: Mode = "actual"
    countries: list[CountryCode] = Field(default_factory=list, max_length=250)
    themes: list[Theme] = Field(default_factory=list, max_length=7)
    audience: Audience
    channels: Annotated[list[Channel], AfterValidator(_unique)] | None = Field(
        None, min_length=1, description="Default: every channel each member has."
    )
    responses: Annotated[list[ResponseSlug], AfterValidator(_unique)] | None = Field(
        None,
        min_length=1,
        max_length=10,
        description=f"The answers members may give. Default: {', '.join(DEFAULT_RESPONSES)}.",
    )
    followup: FollowUp = Field(default_factory=FollowUp)


class IncidentDeclaration(_DeclarationFields, BriefingSource):
    """A declaration as it is sent: its briefing written out, or from a template."""


class IncidentCreate(_DeclarationFields, BriefingInput):
    """A declaration with its briefing written out (a template's already rendered)."""


class IncidentUpdateRequest(BriefingSource):
    """A new briefing version, sent to the same audience and to members who newly match:
    written out, or from a template."""


class IncidentUpdate(BriefingInput):
    """A new briefing version with its briefing written out."""


class IncidentEnd(BaseModel):
    """Resolve or cancel. Without a briefing, a short standard notice is sent."""

    model_config = ConfigDict(extra="forbid")

    require_english: bool = True
    briefing: Briefing | None = None

    _english = field_validator("briefing")(_english_if_required)


class IncidentReject(BaseModel):
    """Why a pending declaration is refused (kept in the timeline and the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[Text, StringConstraints(min_length=1, max_length=1000)]


class IncidentLinks(BaseModel):
    self: str
    status: str
    deliveries: str


class Incident(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    reference: str = Field(examples=["RRMM-2026-0007"])
    title: str
    severity: Severity
    urgency: Urgency
    mode: Mode
    status: IncidentStatus
    countries: list[str]
    themes: list[str]
    channels: list[Channel]
    responses: list[str]
    declared_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    ack_deadline: datetime | None
    approval_expires_at: datetime | None = Field(
        None, description="While `pending_approval`: when the declaration expires unapproved."
    )
    targeted: int = Field(description="Members targeted so far.")
    latest_version: int
    template: TemplateRef | None = Field(
        None, description="The template the declaration was written from, at its version."
    )
    links: IncidentLinks

    @classmethod
    def from_row(cls, incident: IncidentRow, *, targeted: int, latest_version: int) -> Self:
        base = f"/v1/incidents/{incident.id}"
        return cls(
            id=incident.id,
            reference=incident.reference,
            title=incident.title,
            severity=incident.severity,
            urgency=incident.urgency,
            mode=incident.mode,
            status=incident.status,
            countries=incident.countries,
            themes=incident.themes,
            channels=incident.channels,
            responses=incident.responses,
            declared_at=incident.declared_at,
            updated_at=incident.updated_at,
            ended_at=incident.ended_at,
            ack_deadline=incident.ack_deadline,
            approval_expires_at=incident.approval_expires_at,
            targeted=targeted,
            latest_version=latest_version,
            template=TemplateRef.of(incident.template_id, incident.template_version),
            links=IncidentLinks(
                self=base, status=f"{base}/status", deliveries=f"{base}/deliveries"
            ),
        )


class BriefingVersion(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    kind: BriefingKind
    languages: list[str]
    content: dict[str, BriefingEntry]
    template: TemplateRef | None = Field(
        None, description="The template this version was written from, at its version."
    )
    created_at: datetime

    @classmethod
    def from_row(cls, briefing: BriefingRow) -> Self:
        return cls(
            version=briefing.version,
            kind=briefing.kind,
            languages=briefing.languages,
            content=briefing.content,
            template=TemplateRef.of(briefing.template_id, briefing.template_version),
            created_at=briefing.created_at,
        )


class DeliveryCounts(BaseModel):
    by_status: dict[str, int]
    by_channel: dict[str, dict[str, int]]


class AnswerStats(BaseModel):
    answered: int = Field(description="Members with a current answer.")
    by_response: dict[str, int] = Field(description="Current answers per response.")
    ack_rate: float | None = Field(description="answered / targeted (null: nobody targeted).")
    first_answer_seconds: float | None = Field(
        description="Seconds from the declaration to the first answer."
    )
    median_answer_seconds: float | None = Field(
        description="Median seconds from the declaration to each member's first answer "
        "(approximate: within ±4.5%)."
    )


class QuotaStatus(BaseModel):
    network: str | None
    countries: list[str]
    languages: list[str]
    responses: list[str]
    min: int
    targeted: int
    answered: int
    met: bool


class FiredTimer(BaseModel):
    sequence: int
    fired_at: datetime
    outcome: str | None


class FollowUpStatus(BaseModel):
    reminders: list[FiredTimer] = Field(description="Reminder rounds fired so far.")
    escalations: list[FiredTimer] = Field(description="Escalations fired so far.")
    reminder_versions: list[int] = Field(description="Briefing versions sent as reminders.")
    escalation_versions: list[int] = Field(description="Briefing versions sent to escalation.")


class TargetingStatus(BaseModel):
    """Writing the latest declared or updated version's targets and ledger rows: the
    request writes the first chunk of members, the worker the rest."""

    state: Literal["in_progress", "done"]
    members: int = Field(description="Members the version goes to (counted when written).")
    done: int = Field(description="Members whose ledger rows are written.")


class IncidentStatusView(BaseModel):
    """Aggregates only: safe for dashboards (viewer keys)."""

    id: uuid.UUID
    reference: str
    status: IncidentStatus
    mode: Mode
    severity: Severity
    targeted: int
    deliveries: DeliveryCounts
    answers: AnswerStats
    quotas: list[QuotaStatus]
    followup: FollowUpStatus
    targeting: TargetingStatus | None = Field(
        description="Progress of the latest version's targeting (null before this existed)."
    )
    declared_at: datetime
    updated_at: datetime
    last_change_at: datetime = Field(
        description="The latest change of the incident, its deliveries, answers or timers."
    )


class CoverageGroup(BaseModel):
    group: str
    targeted: int
    sent: int
    failed: int = Field(description="Members with a failed delivery and none sent.")
    answered: int


class CoverageView(BaseModel):
    """The funnel per group, counted in members. Aggregates only."""

    id: uuid.UUID
    by: Literal["network", "country", "language", "channel"]
    groups: list[CoverageGroup]


class DeliveryMember(BaseModel):
    id: uuid.UUID | None
    name: str | None


class DeliveryView(BaseModel):
    id: int
    version: int
    member: DeliveryMember
    channel: Channel
    status: DeliveryStatus
    attempts: int
    language: str
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        """A ledger row (`Delivery`) with its briefing `version` and its member's `name`."""
        delivery: Delivery = row.Delivery
        return cls(
            id=delivery.id,
            version=row.version,
            member=DeliveryMember(id=delivery.member_id, name=row.name),
            channel=delivery.channel,
            status=delivery.status,
            attempts=delivery.attempts,
            language=delivery.language,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            created_at=delivery.created_at,
            updated_at=delivery.updated_at,
            sent_at=delivery.sent_at,
        )


class IncidentFilters(BaseModel):
    status: IncidentStatus | None = None
    mode: Mode | None = None
    severity: Severity | None = None
    q: Line | None = None


class TimelineEvent(BaseModel):
    """One step of an incident, in order. `actor` is the API key's name for a person's
    action and null for what the system did by itself (fan-out, reminders, deadline)."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    kind: TimelineEventKind
    at: datetime
    actor: str | None
    briefing_version: int | None
    detail: dict[str, Any]


class TimelineStreamEvent(BaseModel):
    """The data of an `event: timeline` of the event stream: a timeline event as
    `/timeline` lists it, without `actor` for viewers."""

    seq: int
    kind: TimelineEventKind
    at: datetime
    briefing_version: int | None
    detail: dict[str, Any]
    actor: str | None = Field(None, description="Operators only: absent for viewers.")


class AnswerStreamEvent(BaseModel):
    """The data of an `event: answer` of the event stream (operators only): who answered
    what, when."""

    seq: int
    ack_id: int
    member_id: uuid.UUID | None = Field(description="Null once the member is deleted.")
    member_name: str | None
    response: str
    comment: str | None
    channel: str
    route: str
    language: str
    briefing_version: int
    late: bool
    answered_at: datetime


def _stream_event(event: str, data: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"const": event},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer", "minimum": 0},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{data.__name__}"},
            },
        },
    }


# The stream's events (`itemSchema`, as OpenAPI 3.2 and FastAPI's own SSE routes describe
# them): the models are added to the document's components by app/main.py.
EVENT_STREAM_MODELS = (TimelineStreamEvent, AnswerStreamEvent)
EVENT_STREAM_ITEM: dict[str, Any] = {
    "oneOf": [
        _stream_event("status", IncidentStatusView),
        _stream_event("timeline", TimelineStreamEvent),
        _stream_event("answer", AnswerStreamEvent),
    ]
}


class PreviewEmail(BaseModel):
    subject: str
    text: str = Field(description="The text part, the acknowledgement link a placeholder.")
    html: str = Field(description="The HTML part, the acknowledgement link a placeholder.")
    size: int = Field(description="Bytes of the whole message as sent (headers included).")


class PreviewWebhook(BaseModel):
    body: str = Field(description="The signed body, byte for byte but for the token.")
    size: int = Field(description="Bytes of the body.")


class PreviewMessage(BaseModel):
    """What the members sent one language receive."""

    language: str
    direction: Literal["ltr", "rtl"]
    members: int
    email: PreviewEmail
    webhook: PreviewWebhook


class LanguageFallback(BaseModel):
    members: int = Field(description="Members none of whose languages the briefing has.")
    by_language: dict[str, int] = Field(description="The language they are sent instead.")


class QuietHoursPreview(BaseModel):
    members: int = Field(
        description="Members in their quiet hours whose briefing would wait (minor and "
        "moderate only)."
    )
    until: datetime | None = Field(description="The latest of those waits.")


class IncidentPreview(BaseModel):
    """A dry run: what the declaration or update would target and send. Nothing written."""

    members: int = Field(description="Members the version would go to.")
    by_network: dict[str, int]
    by_country: dict[str, int]
    by_language: dict[str, int] = Field(description="By the language actually sent.")
    by_channel: dict[str, int] = Field(description="Deliveries per channel.")
    language_fallback: LanguageFallback
    quiet_hours: QuietHoursPreview
    unreachable: int = Field(description="Members of the audience no chosen channel reaches.")
    ack_url_placeholder: str
    messages: list[PreviewMessage]
