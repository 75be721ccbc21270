"""One briefing version as a CAP 1.2 `<alert>`, with one `<info>` per language.

Mapping (see the README): a declaration is an `Alert`; an update, a reminder or an
escalation is an `Update`; the stand-down (resolved) is an `Update` whose infos say
`responseType` AllClear and `urgency` Past, because CAP's `Cancel` means "the earlier
message was issued in error or is withdrawn", which is what a cancellation is and a
stand-down is not. Every `Update`/`Cancel` references all earlier versions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.incidents.service import get_incident
from app.models import Briefing, Incident
from app.vocabulary import BriefingKind, IncidentStatus

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
MEDIA_TYPE = "application/xml"

MSG_TYPES: dict[str, str] = {
    BriefingKind.DECLARED: "Alert",
    BriefingKind.UPDATED: "Update",
    BriefingKind.REMINDER: "Update",
    BriefingKind.ESCALATED: "Update",
    BriefingKind.RESOLVED: "Update",
    BriefingKind.CANCELLED: "Cancel",
}
STATUS = {"actual": "Actual", "exercise": "Exercise"}
URGENCY = {"immediate": "Immediate", "expected": "Expected", "future": "Future"}
SEVERITY = {"minor": "Minor", "moderate": "Moderate", "severe": "Severe", "extreme": "Extreme"}
RESTRICTION = (
    "For the members of the RRMM networks (personalities, editors and media "
    "decision-makers) only: not for publication or onward distribution."
)
EXERCISE_NOTE = "Exercise: this is not a real incident."


def cap_sender(mail_from: str) -> str:
    """The sender: the address of `RRMM_MAIL_FROM` (CAP forbids spaces, commas, `<`, `&`)."""
    address = parseaddr(mail_from)[1] or "rrmm@rrmm.invalid"
    return "".join(c for c in address if not c.isspace() and c not in ",<&")


def cap_time(moment: datetime) -> str:
    """`2026-11-29T18:05:17+00:00`: CAP forbids `Z` and fractional seconds."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def identifier(incident: Incident, version: int) -> str:
    """Stable per version, e.g. `RRMM-2026-0007-v2`."""
    return f"{incident.reference}-v{version}"


def _versions(session: Session, incident_id: uuid.UUID, upto: int | None) -> list[Briefing]:
    query = select(Briefing).where(Briefing.incident_id == incident_id)
    if upto is not None:
        query = query.where(Briefing.version <= upto)
    return list(session.scalars(query.order_by(Briefing.version)))


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{CAP_NAMESPACE}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _description(entry: dict[str, Any]) -> str:
    body: str = entry.get("body", "")
    points = [f"- {point}" for point in entry.get("talking_points") or []]
    return "\n\n".join([body, "\n".join(points)]) if points else body


def export_alert(
    session: Session, incident_id: uuid.UUID, *, sender: str, version: int | None = None
) -> bytes:
    """The CAP 1.2 alert of the latest briefing version (or of `version`), as UTF-8 XML."""
    incident = get_incident(session, incident_id)
    if incident.status in (
        IncidentStatus.PENDING_APPROVAL,
        IncidentStatus.REJECTED,
        IncidentStatus.EXPIRED,
    ):
        raise Conflict(f"the incident is {incident.status}: it was never sent, so no alert")
    versions = _versions(session, incident_id, version)
    if not versions or (version is not None and versions[-1].version != version):
        raise NotFound(f"incident {incident_id} has no briefing version {version}")
    briefing, earlier = versions[-1], versions[:-1]
    msg_type = MSG_TYPES[briefing.kind]

    # The default namespace (no prefix): lxml-stubs types `nsmap` keys as str only.
    alert = etree.Element(f"{{{CAP_NAMESPACE}}}alert", nsmap={None: CAP_NAMESPACE})  # type: ignore[dict-item]
    _sub(alert, "identifier", identifier(incident, briefing.version))
    _sub(alert, "sender", sender)
    _sub(alert, "sent", cap_time(briefing.created_at))
    _sub(alert, "status", STATUS[incident.mode])
    _sub(alert, "msgType", msg_type)
    _sub(alert, "source", "RRMM")
    _sub(alert, "scope", "Restricted")
    _sub(alert, "restriction", RESTRICTION)
    if incident.mode == "exercise":
        _sub(alert, "note", EXERCISE_NOTE)
    if msg_type != "Alert" and earlier:
        _sub(
            alert,
            "references",
            " ".join(
                f"{sender},{identifier(incident, b.version)},{cap_time(b.created_at)}"
                for b in earlier
            ),
        )
    _sub(alert, "incidents", incident.reference)

    resolved = briefing.kind == BriefingKind.RESOLVED
    for language in briefing.languages:
        entry = briefing.content[language]
        info = _sub(alert, "info")
        _sub(info, "language", language)
        _sub(info, "category", "Safety")
        _sub(info, "event", incident.title)
        if resolved:
            _sub(info, "responseType", "AllClear")
        _sub(info, "urgency", "Past" if resolved else URGENCY[incident.urgency])
        _sub(info, "severity", SEVERITY[incident.severity])
        _sub(info, "certainty", "Likely")
        for theme in incident.themes:
            code = _sub(info, "eventCode")
            _sub(code, "valueName", "RRMM-theme")
            _sub(code, "value", theme)
        _sub(info, "senderName", "RRMM")
        _sub(info, "headline", entry.get("subject", ""))
        _sub(info, "description", _description(entry))
        if incident.countries:
            area = _sub(info, "area")
            _sub(area, "areaDesc", ", ".join(incident.countries))
            for country in incident.countries:
                geocode = _sub(area, "geocode")
                _sub(geocode, "valueName", "ISO3166-1-alpha-2")
                _sub(geocode, "value", country)
    return bytes(etree.tostring(alert, xml_declaration=True, encoding="UTF-8", pretty_print=True))
