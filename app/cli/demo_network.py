"""A synthetic network for `rrmm demo`: personalities and editors with English, Arabic and
French names, countries, languages and time zones that go together. Deterministic for a
given seed, so two runs of the demo tell the same story."""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass
from typing import Any

from faker import Faker

# (country, time zone, languages in order of preference, regional tag)
_PLACES: dict[str, list[tuple[str, str, list[str], str]]] = {
    "en": [
        ("GB", "Europe/London", ["en"], "europe"),
        ("IE", "Europe/Dublin", ["en"], "europe"),
        ("US", "America/New_York", ["en"], "north-america"),
        ("CA", "America/Toronto", ["en", "fr"], "north-america"),
        ("NG", "Africa/Lagos", ["en"], "west-africa"),
        ("KE", "Africa/Nairobi", ["en"], "east-africa"),
        ("ZA", "Africa/Johannesburg", ["en"], "southern-africa"),
        ("AU", "Australia/Sydney", ["en"], "oceania"),
    ],
    "ar": [
        ("EG", "Africa/Cairo", ["ar", "en"], "mashriq"),
        ("JO", "Asia/Amman", ["ar", "en"], "mashriq"),
        ("LB", "Asia/Beirut", ["ar", "fr", "en"], "mashriq"),
        ("AE", "Asia/Dubai", ["ar", "en"], "gulf"),
        ("QA", "Asia/Qatar", ["ar", "en"], "gulf"),
        ("MA", "Africa/Casablanca", ["ar", "fr"], "maghreb"),
        ("DZ", "Africa/Algiers", ["ar", "fr"], "maghreb"),
        ("TN", "Africa/Tunis", ["ar", "fr"], "maghreb"),
    ],
    "fr": [
        ("FR", "Europe/Paris", ["fr", "en"], "europe"),
        ("BE", "Europe/Brussels", ["fr", "en"], "europe"),
        ("CH", "Europe/Zurich", ["fr", "en"], "europe"),
        ("SN", "Africa/Dakar", ["fr"], "west-africa"),
        ("CI", "Africa/Abidjan", ["fr"], "west-africa"),
        ("CA", "America/Toronto", ["fr", "en"], "north-america"),
    ],
}
# Faker's Arabic locales for the Levant and the Maghreb (names, not places).
_FAKER_LOCALES = {"en": ["en_US", "en_GB"], "ar": ["ar_PS", "ar_DZ"], "fr": ["fr_FR"]}
_ORGANIZATIONS = {
    "en": [
        "The Daily Ledger",
        "Northern Post",
        "Radio Meridian",
        "The Civic Review",
        "Channel 9 News",
        "Open Square Foundation",
    ],
    "ar": ["الوسط", "صوت المدينة", "الجسر", "الأفق الجديد", "إذاعة النخيل", "منتدى الحوار"],
    "fr": [
        "Le Quotidien",
        "La Voix du Sahel",
        "Radio Horizon",
        "L'Écho des Cités",
        "Fondation Dialogue",
        "Le Courrier du Soir",
    ],
}
_TITLES = {
    "editors": {
        "en": ["Editor-in-chief", "Managing editor", "Head of news"],
        "ar": ["رئيس التحرير", "مدير التحرير", "رئيس قسم الأخبار"],
        "fr": ["Rédactrice en chef", "Directeur de la rédaction", "Chef des informations"],
    },
    "personalities": {
        "en": ["Writer", "Musician", "Religious leader", "Athlete"],
        "ar": ["كاتب", "فنانة", "عالم دين", "رياضي"],
        "fr": ["Écrivaine", "Musicien", "Responsable religieux", "Sportive"],
    },
}
THEMES = (
    "religious-hatred",
    "cultural-diversity",
    "citizenship",
    "intercultural-dialogue",
    "human-rights-education",
    "human-contacts",
    "social-cohesion",
)


@dataclass(frozen=True)
class DemoMember:
    """One synthetic member: the API body, whether it has a webhook, and its behaviour."""

    number: int
    language: str  # en, ar or fr: the member's first language
    network: str
    body: dict[str, Any]
    webhook: bool
    # Drawn once: below the auto-ack share, the newsroom system answers the briefing;
    # just above it, it answers only the reminder (a slow responder).
    roll: float
    response: str


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum() or ch == " ").strip()


def _email_local(name: str, number: int) -> str:
    words = _ascii(name).split()
    return (".".join(words[-2:]) if words else "member") + f".{number:04d}"


def pick_response(rng: random.Random) -> str:
    """Most newsrooms say they will engage or simply acknowledge."""
    return rng.choices(
        ["will_engage", "acknowledged", "need_briefing_call", "unavailable"],
        weights=[45, 35, 10, 10],
    )[0]


def build_network(
    count: int, *, webhook_url: Any, seed: int = 2026, webhook_share: float = 0.5
) -> list[DemoMember]:
    """`count` members, about a third per language, about `webhook_share` of them reached
    by a webhook only (`webhook_url(n)` gives its address) and the others by email only."""
    rng = random.Random(seed)  # noqa: S311 (a story, not a secret)
    fakers: dict[str, list[Faker]] = {}
    for language, locales in _FAKER_LOCALES.items():
        fakers[language] = []
        for locale in locales:
            faker = Faker(locale)
            faker.seed_instance(seed)
            fakers[language].append(faker)
    members = []
    for number in range(1, count + 1):
        language = ("en", "ar", "fr")[number % 3]
        faker = fakers[language][number % len(fakers[language])]
        name = f"{faker.first_name()} {faker.last_name()}"
        country, timezone, languages, region = rng.choice(_PLACES[language])
        network = "editors" if rng.random() < 0.55 else "personalities"
        webhook = rng.random() < webhook_share
        body: dict[str, Any] = {
            "network": network,
            "name": name,
            "organization": rng.choice(_ORGANIZATIONS[language]),
            "title": rng.choice(_TITLES[network][language]),
            "country": country,
            "languages": languages,
            "themes": rng.sample(THEMES, k=rng.randint(1, 3)),
            "tags": ["demo", region],
            "timezone": timezone,
            "consent": {"given_at": "2026-01-15T10:00:00+00:00", "method": "written"},
        }
        if webhook:
            body["webhook_url"] = webhook_url(number)
        else:
            body["email"] = f"{_email_local(name, number)}@example.org"
        members.append(
            DemoMember(
                number=number,
                language=language,
                network=network,
                body=body,
                webhook=webhook,
                roll=rng.random(),
                response=pick_response(rng),
            )
        )
    return members


def briefing() -> dict[str, Any]:
    """The exercise's briefing in the three working languages."""
    return {
        "en": {
            "subject": "Call for calm after the cartoon publication",
            "body": "A cartoon published this morning is being shared widely with calls to "
            "protest tonight. Please use your voice to call for calm and for respect of "
            "every faith.\n\nThis is an exercise of the Rapid Response Media Mechanism.",
            "talking_points": [
                "Freedom of expression and respect for beliefs go together.",
                "Violence answers nothing; dialogue does.",
            ],
        },
        "fr": {
            "subject": "Appel au calme après la publication de la caricature",
            "body": "Une caricature publiée ce matin circule largement avec des appels à "
            "manifester ce soir. Merci d'appeler au calme et au respect de toutes les "
            "croyances.\n\nCeci est un exercice du Mécanisme de réponse rapide des médias.",
            "talking_points": [
                "La liberté d'expression et le respect des croyances vont de pair.",
                "La violence ne répond à rien ; le dialogue, si.",
            ],
        },
        "ar": {
            "subject": "دعوة إلى الهدوء بعد نشر الرسم الكاريكاتيري",
            "body": "يتم تداول رسم كاريكاتيري نُشر هذا الصباح على نطاق واسع مع دعوات إلى "
            "التظاهر الليلة. نرجو منكم الدعوة إلى الهدوء واحترام جميع الأديان.\n\nهذا "
            "تمرين لآلية الاستجابة الإعلامية السريعة.",
            "talking_points": [
                "حرية التعبير واحترام المعتقدات يسيران معاً.",
                "العنف لا يجيب عن شيء؛ الحوار هو الجواب.",
            ],
        },
    }
