"""The acknowledgement page: server-rendered, no script, no third-party resource, in the
member's language (right-to-left where the language is)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader

from app.deliveries.content import text_direction

_ENV = Environment(loader=PackageLoader("app.acks", "templates"), autoescape=True)

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "question": "Please tell us what you will do:",
        "comment": "Comment (optional)",
        "current": "Your current answer",
        "thanks": "Thank you. Your answer is recorded:",
        "late": "The incident had already ended; your answer is kept all the same.",
        "change": "Change my answer",
        "invalid_title": "Link not valid",
        "invalid": "This link is not valid or has expired. If you need help, contact the "
        "focal point who briefed you.",
        "exercise": "Exercise",
    },
    "fr": {
        "question": "Merci de nous dire ce que vous ferez :",
        "comment": "Commentaire (facultatif)",
        "current": "Votre réponse actuelle",
        "thanks": "Merci. Votre réponse est enregistrée :",
        "late": "L'incident était déjà clos ; votre réponse est néanmoins conservée.",
        "change": "Modifier ma réponse",
        "invalid_title": "Lien non valide",
        "invalid": "Ce lien n'est pas valide ou a expiré. Pour toute aide, contactez le point "
        "focal qui vous a informé.",
        "exercise": "Exercice",
    },
    "ar": {
        "question": "يرجى إخبارنا بما ستفعله:",
        "comment": "تعليق (اختياري)",
        "current": "إجابتك الحالية",
        "thanks": "شكراً لك. تم تسجيل إجابتك:",
        "late": "كان الحادث قد انتهى؛ ومع ذلك تم الاحتفاظ بإجابتك.",
        "change": "تغيير إجابتي",
        "invalid_title": "الرابط غير صالح",
        "invalid": "هذا الرابط غير صالح أو انتهت صلاحيته. للمساعدة، تواصل مع جهة الاتصال التي "
        "أرسلت إليك الإحاطة.",
        "exercise": "تمرين",
    },
}

_RESPONSE_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "acknowledged": "Acknowledged",
        "will_engage": "I will speak or publish",
        "unavailable": "I am unavailable",
        "need_briefing_call": "I need a briefing call",
    },
    "fr": {
        "acknowledged": "Bien reçu",
        "will_engage": "Je vais m'exprimer ou publier",
        "unavailable": "Je ne suis pas disponible",
        "need_briefing_call": "J'ai besoin d'un appel d'information",
    },
    "ar": {
        "acknowledged": "تم الاستلام",
        "will_engage": "سأتحدث أو أنشر",
        "unavailable": "لست متاحاً",
        "need_briefing_call": "أحتاج إلى مكالمة إحاطة",
    },
}


def _language(language: str) -> str:
    primary = language.split("-")[0].lower()
    return primary if primary in _WORDS else "en"


def response_labels(language: str, responses: list[str]) -> dict[str, str]:
    """Labels for an incident's answers; an incident's own answers show as written."""
    known = _RESPONSE_LABELS[_language(language)]
    return {r: known.get(r, r.replace("_", " ").capitalize()) for r in responses}


def _context(language: str, **values: Any) -> dict[str, Any]:
    shown = _language(language)
    return {
        "language": shown,
        "direction": text_direction(shown),
        "w": _WORDS[shown],
        **values,
    }


def render_page(template: str, language: str, **values: Any) -> str:
    return _ENV.get_template(template).render(_context(language, **values))


def render_invalid() -> str:
    """One page for every reason a link fails: nothing to learn from it."""
    return render_page("invalid.html.j2", "en", title=_WORDS["en"]["invalid_title"])
