"""A declaration or an update computed without writing: who it reaches and what they read.

The counts are the targeting's own conditions and CASEs (`targeting.breakdown`), the
messages the sender's own functions (`deliveries.service.sample_messages`), so a preview
says what the fan-out then does. The incident and briefing read by the renderer are
transient objects, never added to the session.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.deliveries.content import ACK_URL_PLACEHOLDER
from app.deliveries.service import sample_messages
from app.errors import Conflict
from app.incidents import audience, targeting
from app.incidents.schemas import Audience, IncidentCreate, IncidentUpdate
from app.incidents.service import get_incident, incident_from
from app.models import Briefing, Incident, ReferenceCounter, Roster
from app.models.base import utcnow
from app.vocabulary import ENDED_INCIDENT_STATUSES, BriefingKind, Channel, IncidentStatus

# Stands for a member's acknowledgement token in previewed messages.
PREVIEW_TOKEN = "PREVIEW-ACK-TOKEN"  # noqa: S105 (a placeholder, not a secret)


def _next_reference(session: Session, year: int) -> str:
    """The reference the declaration would most likely get (read, not reserved)."""
    value = session.scalar(select(ReferenceCounter.value).where(ReferenceCounter.year == year))
    return f"RRMM-{year}-{(value or 0) + 1:04d}"


def _content(data: IncidentCreate | IncidentUpdate) -> dict[str, Any]:
    return {language: entry.model_dump() for language, entry in data.briefing.items()}


def preview_declaration(
    session: Session, data: IncidentCreate, *, settings: Settings
) -> dict[str, Any]:
    """What `POST /v1/incidents` with this body would target and send, writing nothing."""
    now = utcnow()
    audience.check_known(
        session,
        Roster.id,
        data.followup.escalation_rosters,
        "followup.escalation_rosters",
        "no such roster",
    )
    described = audience.audience_condition(session, data.audience)
    incident = incident_from(
        data,
        reference=_next_reference(session, now.year),
        now=now,
        id=uuid.UUID(int=0),
        status=IncidentStatus.MOBILIZING,
    )
    channels = incident.channels
    briefing = Briefing(
        id=0,
        incident_id=incident.id,
        version=1,
        kind=BriefingKind.DECLARED,
        languages=list(data.briefing),
        content=_content(data),
        created_at=now,
    )
    condition = and_(described, audience.reachable(channels))
    return _answer(session, settings, incident, briefing, described, condition, now)


def preview_update(
    session: Session, incident_id: uuid.UUID, data: IncidentUpdate, *, settings: Settings
) -> dict[str, Any]:
    """What `POST /v1/incidents/{id}/updates` with this body would send, writing nothing:
    everyone targeted so far and the members who newly match."""
    incident = get_incident(session, incident_id)
    if incident.status in ENDED_INCIDENT_STATUSES:
        raise Conflict(f"the incident is {incident.status}")
    if incident.status == IncidentStatus.PENDING_APPROVAL:
        raise Conflict("the incident is pending approval: approve or reject it first")
    now = utcnow()
    latest = session.scalar(
        select(func.max(Briefing.version)).where(Briefing.incident_id == incident.id)
    )
    briefing = Briefing(
        id=0,
        incident_id=incident.id,
        version=(latest or 0) + 1,
        kind="updated",
        languages=list(data.briefing),
        content=_content(data),
        created_at=now,
    )
    described = audience.audience_condition(session, Audience(**incident.audience), check=False)
    condition = or_(audience.newcomers(session, incident), audience.recipients(incident))
    return _answer(session, settings, incident, briefing, described, condition, now)


def _answer(
    session: Session,
    settings: Settings,
    incident: Incident,
    briefing: Briefing,
    described: Any,
    condition: Any,
    now: datetime,
) -> dict[str, Any]:
    counts = targeting.breakdown(
        session,
        described,
        condition,
        channels=incident.channels,
        briefing_languages=briefing.languages,
        severity=incident.severity,
        now=now,
    )
    placeholder = f"{settings.public_url.rstrip('/')}/ack/{PREVIEW_TOKEN}"
    messages = []
    for language in sorted(counts.by_language):
        rendered, email, webhook = sample_messages(
            settings, incident, briefing, language, token=PREVIEW_TOKEN
        )
        text = rendered.text.replace(ACK_URL_PLACEHOLDER, placeholder)
        html = rendered.html.replace(ACK_URL_PLACEHOLDER, placeholder)
        messages.append(
            {
                "language": language,
                "direction": rendered.direction,
                "members": counts.by_language[language],
                Channel.EMAIL: {
                    "subject": rendered.subject,
                    "text": text,
                    "html": html,
                    "size": len(email),
                },
                Channel.WEBHOOK: {"body": webhook, "size": len(webhook.encode())},
            }
        )
    return {
        "members": counts.members,
        "by_network": counts.by_network,
        "by_country": counts.by_country,
        "by_language": counts.by_language,
        "by_channel": counts.by_channel,
        "language_fallback": {
            "members": sum(counts.fallback.values()),
            "by_language": counts.fallback,
        },
        "quiet_hours": {"members": counts.deferred, "until": counts.deferred_until},
        "unreachable": counts.unreachable,
        "ack_url_placeholder": placeholder,
        "messages": messages,
    }
