"""What a member receives: chosen language, subject line, text and HTML, webhook body.

Everything that is the same for every member reading one briefing version in one language
is rendered once (`RenderedBriefing`); per member only the acknowledgement link and the
addressing change.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from jinja2 import Environment, PackageLoader

from app.models import Briefing, Incident
from app.vocabulary import BriefingKind

# Placed where the per-member acknowledgement URL goes; replaced per member.
ACK_URL_PLACEHOLDER = "RRMM0ACK0URL0PLACEHOLDER"

# Labels in the working languages; any other language gets the English ones.
_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "exercise": "EXERCISE",
        "updated": "Update {version}",
        "resolved": "Stand-down",
        "cancelled": "Cancelled",
        "reminder": "Reminder",
        "talking_points": "Talking points",
        "acknowledge": "Acknowledge and tell us what you will do",
        "severity": "Severity",
        "urgency": "Urgency",
        "exercise_note": "This is an exercise. No real incident is taking place.",
        "footer": "You receive this because you agreed to be contacted by the Rapid Response "
        "Media Mechanism.",
    },
    "fr": {
        "exercise": "EXERCICE",
        "updated": "Mise à jour {version}",
        "resolved": "Fin d'alerte",
        "cancelled": "Annulé",
        "reminder": "Rappel",
        "talking_points": "Éléments de langage",
        "acknowledge": "Accuser réception et indiquer ce que vous ferez",
        "severity": "Gravité",
        "urgency": "Urgence",
        "exercise_note": "Ceci est un exercice. Aucun incident réel n'a lieu.",
        "footer": "Vous recevez ce message car vous avez accepté d'être contacté par le "
        "Mécanisme de réponse rapide des médias.",
    },
    "ar": {
        "exercise": "تمرين",
        "updated": "تحديث {version}",
        "resolved": "إنهاء التنبيه",
        "cancelled": "إلغاء",
        "reminder": "تذكير",
        "talking_points": "نقاط للحديث",
        "acknowledge": "أكّد الاستلام وأخبرنا بما ستفعله",
        "severity": "الخطورة",
        "urgency": "الاستعجال",
        "exercise_note": "هذا تمرين. لا يوجد حادث حقيقي.",
        "footer": "تصلك هذه الرسالة لأنك وافقت على أن تتواصل معك آلية الاستجابة الإعلامية السريعة.",
    },
}

# The severity and urgency scales (CAP 1.2's words) as a member reads them, after the
# French and Arabic of the public alerting systems that use CAP (Canada's CAP-CP in French).
# Agreement in Arabic: الخطورة is feminine, الاستعجال masculine.
_SCALES: dict[str, dict[str, str]] = {
    "en": {
        "minor": "minor",
        "moderate": "moderate",
        "severe": "severe",
        "extreme": "extreme",
        "immediate": "immediate",
        "expected": "expected",
        "future": "future",
    },
    "fr": {
        "minor": "mineure",
        "moderate": "modérée",
        "severe": "grave",
        "extreme": "extrême",
        "immediate": "immédiate",
        "expected": "prévue",
        "future": "future",
    },
    "ar": {
        "minor": "طفيفة",
        "moderate": "متوسطة",
        "severe": "شديدة",
        "extreme": "قصوى",
        "immediate": "فوري",
        "expected": "متوقع",
        "future": "مستقبلي",
    },
}

WEBHOOK_TYPES: dict[str, str] = {
    BriefingKind.DECLARED: "incident.declared",
    BriefingKind.UPDATED: "incident.updated",
    BriefingKind.RESOLVED: "incident.resolved",
    BriefingKind.CANCELLED: "incident.cancelled",
    BriefingKind.REMINDER: "incident.reminder",
    # The second tier reads the briefing for the first time.
    BriefingKind.ESCALATED: "incident.declared",
}


def choose_language(member_languages: Sequence[str], briefing_languages: Sequence[str]) -> str:
    """The member's first language the briefing has (exactly, else by primary subtag), else
    English, else the briefing's first language."""
    available = list(briefing_languages)
    by_primary: dict[str, str] = {}
    for language in available:
        by_primary.setdefault(language.split("-")[0].lower(), language)
    for wanted in member_languages:
        if wanted in available:
            return wanted
        primary = by_primary.get(wanted.split("-")[0].lower())
        if primary is not None:
            return primary
    return "en" if "en" in available else available[0]


def has_language(member_languages: Sequence[str], briefing_languages: Sequence[str]) -> bool:
    """Whether `choose_language` finds one of the member's own languages (else it falls
    back)."""
    primaries = {language.split("-")[0].lower() for language in briefing_languages}
    return any(
        wanted in briefing_languages or wanted.split("-")[0].lower() in primaries
        for wanted in member_languages
    )


@lru_cache(maxsize=256)
def text_direction(language: str) -> str:
    try:
        return str(Locale.parse(language, sep="-").text_direction)
    except (UnknownLocaleError, ValueError):
        return "ltr"


def labels(language: str) -> dict[str, str]:
    return _LABELS.get(language.split("-")[0].lower(), _LABELS["en"])


def scale_word(language: str, value: str) -> str:
    """A severity or urgency (`severe`, `immediate`) in the member's language; English for a
    language without its own words."""
    words = _SCALES.get(language.split("-")[0].lower(), _SCALES["en"])
    return words.get(value, value)


def subject_line(incident: Incident, briefing: Briefing, language: str, subject: str) -> str:
    """`[EXERCISE] [RRMM-2026-0007] Update 2: …` — the kind is visible in every inbox."""
    words = labels(language)
    parts = []
    if incident.mode == "exercise":
        # The English marker always (filters and people look for it), the local one too.
        parts.append("[EXERCISE]")
        if words["exercise"] != "EXERCISE":
            parts.append(f"[{words['exercise']}]")
    parts.append(f"[{incident.reference}]")
    if briefing.kind not in (BriefingKind.DECLARED, BriefingKind.ESCALATED):
        parts.append(words[briefing.kind].format(version=briefing.version) + ":")
    parts.append(subject)
    return " ".join(parts)


_LOADER = PackageLoader("app.deliveries", "templates")
# Plain text is not HTML: escaping would show "&amp;" to the reader.
_TEXT = Environment(loader=_LOADER, autoescape=False, trim_blocks=True).get_template(  # noqa: S701
    "briefing.txt.j2"
)
_HTML = Environment(loader=_LOADER, autoescape=True, trim_blocks=True).get_template(
    "briefing.html.j2"
)


@dataclass(frozen=True)
class RenderedBriefing:
    """One briefing version in one language, ready for any member reading it."""

    language: str
    direction: str
    subject: str
    text: str
    html: str
    webhook_briefing: dict[str, Any]


def render_key(incident: Incident, briefing: Briefing, language: str) -> Hashable:
    """Everything `render` reads: equal keys give equal renderings, so the key is safe to
    cache on in a long-lived worker (a new version is a new briefing row; an edited
    incident gives another key)."""
    entry = briefing.content[language]
    return (
        incident.id,
        incident.mode,
        incident.reference,
        incident.severity,
        incident.urgency,
        briefing.id,
        briefing.version,
        briefing.kind,
        language,
        entry["subject"],
        entry["body"],
        tuple(entry.get("talking_points", [])),
    )


_renders: dict[Hashable, RenderedBriefing] = {}
# A few briefings × languages; a worker's cache never grows past this.
_RENDER_CACHE_LIMIT = 256


def cached_render(
    incident: Incident, briefing: Briefing, language: str
) -> tuple[Hashable, RenderedBriefing]:
    """`render`, once per process for each (briefing version, language) instead of once
    per batch: a fan-out of 100,000 members is 200 batches of the same few renderings."""
    key = render_key(incident, briefing, language)
    rendered = _renders.get(key)
    if rendered is None:
        if len(_renders) >= _RENDER_CACHE_LIMIT:
            _renders.clear()
        rendered = _renders[key] = render(incident, briefing, language)
    return key, rendered


def render(incident: Incident, briefing: Briefing, language: str) -> RenderedBriefing:
    entry = briefing.content[language]
    subject = subject_line(incident, briefing, language, entry["subject"])
    context = {
        "incident": incident,
        "subject": subject,
        "body": entry["body"],
        "paragraphs": [p for p in entry["body"].split("\n\n") if p.strip()],
        "talking_points": entry.get("talking_points", []),
        "ack_url": ACK_URL_PLACEHOLDER,
        "exercise": incident.mode == "exercise",
        "w": labels(language),
        "severity": scale_word(language, incident.severity),
        "urgency": scale_word(language, incident.urgency),
        "language": language,
        "direction": text_direction(language),
    }
    return RenderedBriefing(
        language=language,
        direction=text_direction(language),
        subject=subject,
        text=_TEXT.render(context),
        html=_HTML.render(context),
        webhook_briefing={
            "version": briefing.version,
            "language": language,
            "subject": entry["subject"],
            "body": entry["body"],
            "talking_points": entry.get("talking_points", []),
        },
    )


def incident_summary(incident: Incident) -> dict[str, Any]:
    """The `incident` block of a webhook body."""
    return {
        "id": str(incident.id),
        "reference": incident.reference,
        "title": incident.title,
        "severity": incident.severity,
        "urgency": incident.urgency,
        "mode": incident.mode,
        "countries": incident.countries,
        "themes": incident.themes,
        "status": incident.status,
    }


def webhook_timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
