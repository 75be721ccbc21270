"""Unit tests of what a member receives and when: language, quiet hours, subject, rendering,
and the acknowledgement token. No database, no broker."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.deliveries.content import (
    ACK_URL_PLACEHOLDER,
    choose_language,
    render,
    subject_line,
    text_direction,
)
from app.deliveries.quiet_hours import first_attempt_at, quiet_until
from app.deliveries.tokens import AckTokenSigner, InvalidToken
from app.models import Briefing, Incident

PARIS = ZoneInfo("Europe/Paris")
SECRET = "k" * 64

# --- choose_language -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "briefing", "expected"),
    [
        (["fr"], ["en", "fr", "ar"], "fr"),  # exact
        (["ar", "en"], ["en", "fr", "ar"], "ar"),  # the member's first choice wins
        (["de", "ar"], ["en", "fr", "ar"], "ar"),  # the member's next language the briefing has
        (["fr-CA"], ["en", "fr", "ar"], "fr"),  # primary subtag
        (["fr-CA"], ["en", "fr-CA", "fr"], "fr-CA"),  # exact before primary subtag
        (["fr"], ["en", "fr-CA"], "fr-CA"),  # primary subtag, the other way round
        (["FR-ca"], ["en", "fr"], "fr"),  # subtags compare without case
        (["de"], ["fr", "en", "ar"], "en"),  # English is the fallback
        (["de"], ["ar", "fr"], "ar"),  # no English: the briefing's first language
        (["de"], ["fr", "ar"], "fr"),
        ([], ["en", "fr"], "en"),
    ],
)
def test_choose_language(member, briefing, expected):
    assert choose_language(member, briefing) == expected


# --- quiet hours ---------------------------------------------------------------------------


def paris(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A Paris local time, as the UTC instant a caller would pass."""
    return datetime(year, month, day, hour, minute, tzinfo=PARIS).astimezone(UTC)


NIGHT = (time(22, 0), time(7, 0))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (paris(2026, 1, 15, 23, 30), paris(2026, 1, 16, 7, 0)),  # before midnight → tomorrow
        (paris(2026, 1, 15, 22, 0), paris(2026, 1, 16, 7, 0)),  # the start is quiet
        (paris(2026, 1, 16, 3, 0), paris(2026, 1, 16, 7, 0)),  # after midnight → today
        (paris(2026, 1, 16, 0, 0), paris(2026, 1, 16, 7, 0)),
        (paris(2026, 1, 16, 7, 0), paris(2026, 1, 16, 7, 0)),  # the end is not quiet: now
        (paris(2026, 1, 16, 12, 0), paris(2026, 1, 16, 12, 0)),  # daytime: now
        (paris(2026, 1, 16, 21, 59), paris(2026, 1, 16, 21, 59)),
    ],
)
def test_quiet_hours_across_midnight(now, expected):
    until = quiet_until(now, "Europe/Paris", *NIGHT)
    assert until == expected
    assert until.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        ((12, 59), False),
        ((13, 0), True),
        ((14, 30), True),
        ((14, 59), True),
        ((15, 0), False),
        ((23, 0), False),
        ((3, 0), False),
    ],
)
def test_quiet_hours_within_one_day(local, quiet):
    now = paris(2026, 6, 10, *local)
    until = quiet_until(now, "Europe/Paris", time(13, 0), time(15, 0))
    assert until == (paris(2026, 6, 10, 15, 0) if quiet else now)


def test_quiet_hours_across_the_spring_dst_change():
    # 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST. The night is an hour shorter.
    now = paris(2026, 3, 28, 23, 0)
    assert now == datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    until = quiet_until(now, "Europe/Paris", *NIGHT)
    assert until == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 CEST
    assert until.astimezone(PARIS).hour == 7
    # After the change, still in the same night.
    assert quiet_until(paris(2026, 3, 29, 4, 0), "Europe/Paris", *NIGHT) == until


def test_quiet_hours_across_the_autumn_dst_change():
    # 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET. The night is an hour longer.
    now = paris(2026, 10, 24, 23, 0)
    assert now == datetime(2026, 10, 24, 21, 0, tzinfo=UTC)
    until = quiet_until(now, "Europe/Paris", *NIGHT)
    assert until == datetime(2026, 10, 25, 6, 0, tzinfo=UTC)  # 07:00 CET
    assert until.astimezone(PARIS).hour == 7


def test_quiet_hours_use_the_member_time_zone():
    now = datetime(2026, 1, 15, 20, 0, tzinfo=UTC)  # 05:00 in Tokyo, 15:00 in New York
    assert quiet_until(now, "Asia/Tokyo", *NIGHT) == datetime(2026, 1, 15, 22, 0, tzinfo=UTC)
    assert quiet_until(now, "America/New_York", *NIGHT) == now


def test_without_quiet_hours_it_is_now():
    now = datetime(2026, 1, 15, 23, 0, tzinfo=UTC)
    assert quiet_until(now, "UTC", None, None) == now
    assert quiet_until(now, "UTC", time(22, 0), None) == now


def test_first_attempt_waits_only_for_deferrable_severities():
    night = paris(2026, 1, 15, 23, 30)
    morning = paris(2026, 1, 16, 7, 0)
    assert first_attempt_at(night, "minor", "Europe/Paris", *NIGHT) == morning
    assert first_attempt_at(night, "moderate", "Europe/Paris", *NIGHT) == morning
    assert first_attempt_at(night, "severe", "Europe/Paris", *NIGHT) is None
    assert first_attempt_at(night, "extreme", "Europe/Paris", *NIGHT) is None
    noon = paris(2026, 1, 16, 12, 0)
    assert first_attempt_at(noon, "minor", "Europe/Paris", *NIGHT) is None
    assert first_attempt_at(night, "minor", "Europe/Paris", None, None) is None


# --- text direction, subject line, rendering -----------------------------------------------


@pytest.mark.parametrize(
    ("language", "direction"),
    [
        ("ar", "rtl"),
        ("ar-EG", "rtl"),
        ("fa", "rtl"),
        ("he", "rtl"),
        ("ur", "rtl"),
        ("fr", "ltr"),
        ("en", "ltr"),
        ("fr-CA", "ltr"),
        ("xx", "ltr"),
        ("", "ltr"),
    ],
)
def test_text_direction(language, direction):
    assert text_direction(language) == direction


def make_incident(mode: str = "actual") -> Incident:
    return Incident(
        id=uuid.uuid4(),
        reference="RRMM-2026-0007",
        title="Tension",
        severity="severe",
        urgency="immediate",
        mode=mode,
        countries=["MA"],
        themes=["religious-hatred"],
        status="active",
    )


def make_briefing(kind: str = "declared", version: int = 1, **content: Any) -> Briefing:
    entries = content or {"en": {"subject": "Subject", "body": "Body.", "talking_points": []}}
    return Briefing(version=version, kind=kind, languages=list(entries), content=entries)


@pytest.mark.parametrize(
    ("kind", "version", "language", "expected"),
    [
        ("declared", 1, "en", "[RRMM-2026-0007] Hello"),
        ("updated", 2, "en", "[RRMM-2026-0007] Update 2: Hello"),
        ("resolved", 3, "en", "[RRMM-2026-0007] Stand-down: Hello"),
        ("cancelled", 2, "en", "[RRMM-2026-0007] Cancelled: Hello"),
        ("updated", 2, "fr", "[RRMM-2026-0007] Mise à jour 2: Hello"),
        ("resolved", 3, "fr-CA", "[RRMM-2026-0007] Fin d'alerte: Hello"),
        ("cancelled", 2, "fr", "[RRMM-2026-0007] Annulé: Hello"),
        ("updated", 4, "ar", "[RRMM-2026-0007] تحديث 4: Hello"),
        ("resolved", 3, "ar", "[RRMM-2026-0007] إنهاء التنبيه: Hello"),
        ("cancelled", 2, "ar", "[RRMM-2026-0007] إلغاء: Hello"),
        ("updated", 2, "de", "[RRMM-2026-0007] Update 2: Hello"),  # English labels
    ],
)
def test_subject_line_shows_the_kind(kind, version, language, expected):
    line = subject_line(make_incident(), make_briefing(kind, version), language, "Hello")
    assert line == expected


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "[EXERCISE] [RRMM-2026-0007] Update 2: Hello"),
        ("fr", "[EXERCISE] [EXERCICE] [RRMM-2026-0007] Mise à jour 2: Hello"),
        ("ar", "[EXERCISE] [تمرين] [RRMM-2026-0007] تحديث 2: Hello"),
    ],
)
def test_subject_line_marks_exercises(language, expected):
    line = subject_line(make_incident("exercise"), make_briefing("updated", 2), language, "Hello")
    assert line.startswith("[EXERCISE]")
    assert line == expected
    declared = subject_line(make_incident("exercise"), make_briefing(), language, "Hello")
    assert declared.startswith("[EXERCISE]")
    assert declared.endswith("[RRMM-2026-0007] Hello")


HOSTILE = {
    "subject": "Tom & Jerry <b>",
    "body": "First <script>alert('x')</script> & co.\n\nSecond \"paragraph\".",
    "talking_points": ["Say <i>this</i> & that"],
}


def test_render_html_escapes_and_carries_language_and_direction():
    briefing = make_briefing("updated", 2, en=HOSTILE, ar=HOSTILE)
    rendered = render(make_incident(), briefing, "ar")
    assert rendered.language == "ar"
    assert rendered.direction == "rtl"
    assert '<html lang="ar" dir="rtl">' in rendered.html
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(" in rendered.html
    assert "<i>this</i>" not in rendered.html
    assert "&lt;i&gt;this&lt;/i&gt; &amp; that" in rendered.html
    assert "Tom &amp; Jerry &lt;b&gt;" in rendered.html
    assert ACK_URL_PLACEHOLDER in rendered.html
    assert "<p>First &lt;script&gt;" in rendered.html  # paragraphs kept apart
    assert "<p>Second " in rendered.html
    english = render(make_incident(), briefing, "en")
    assert '<html lang="en" dir="ltr">' in english.html


@pytest.mark.parametrize(
    ("language", "line"),
    [
        ("en", "Severity: severe · Urgency: immediate"),
        ("fr", "Gravité: grave · Urgence: immédiate"),
        ("fr-CA", "Gravité: grave · Urgence: immédiate"),
        ("ar", "الخطورة: شديدة · الاستعجال: فوري"),
        ("de", "Severity: severe · Urgency: immediate"),  # no German words: English ones
    ],
)
def test_severity_and_urgency_are_in_the_members_language(language, line):
    """A member reads the scale in the briefing's language, never the API's English values."""
    entry: dict[str, Any] = {"subject": "S", "body": "B.", "talking_points": []}
    rendered = render(make_incident(), make_briefing("declared", 1, **{language: entry}), language)
    assert line in rendered.text
    assert line in rendered.html
    if not language.startswith(("en", "de")):
        assert "severe" not in rendered.text
        assert "immediate" not in rendered.html


def test_render_text_is_not_html_escaped():
    rendered = render(make_incident("exercise"), make_briefing("updated", 2, fr=HOSTILE), "fr")
    assert "First <script>alert('x')</script> & co." in rendered.text
    assert "Say <i>this</i> & that" in rendered.text
    assert "&amp;" not in rendered.text
    assert "&lt;" not in rendered.text
    assert "&#" not in rendered.text
    assert (
        rendered.subject == "[EXERCISE] [EXERCICE] [RRMM-2026-0007] Mise à jour 2: Tom & Jerry <b>"
    )
    assert rendered.subject in rendered.text
    assert "EXERCICE" in rendered.text  # the exercise is marked in the body too
    assert "EXERCICE" in rendered.html
    assert "Éléments de langage" in rendered.text
    assert ACK_URL_PLACEHOLDER in rendered.text
    assert rendered.webhook_briefing == {
        "version": 2,
        "language": "fr",
        "subject": HOSTILE["subject"],
        "body": HOSTILE["body"],
        "talking_points": HOSTILE["talking_points"],
    }


# --- acknowledgement tokens ----------------------------------------------------------------


def future(hours: int = 24) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_token_round_trip():
    signer = AckTokenSigner(SECRET)
    expires = future()
    token = signer.sign(123_456_789, expires)
    claims = signer.verify(token)
    assert claims.delivery_id == 123_456_789
    assert claims.expires_at == expires
    assert claims.key_id == 1
    assert token == token.strip()
    assert all(c.isalnum() or c in "-_" for c in token)  # URL-safe, no padding
    assert AckTokenSigner(SECRET).verify(token) == claims  # no state: a new signer verifies


def test_every_single_bit_flip_is_rejected():
    signer = AckTokenSigner(SECRET)
    data = raw(signer.sign(42, future()))
    for position in range(len(data)):
        for bit in range(8):
            tampered = bytearray(data)
            tampered[position] ^= 1 << bit
            with pytest.raises(InvalidToken):
                signer.verify(encode(bytes(tampered)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        lambda t: t[:-4],
        lambda t: t[:20],
        lambda t: t + "AAAA",
        lambda t: t + "A",
        lambda _t: "",
        lambda _t: "garbage",
        lambda _t: "!!!!not base64!!!!",
        lambda _t: "é" * 42,
        lambda t: t.upper() if t.upper() != t else t.lower(),
        lambda t: encode(b"\x00" * len(raw(t))),
    ],
)
def test_truncated_or_garbage_tokens_are_rejected(mangle):
    signer = AckTokenSigner(SECRET)
    token = signer.sign(42, future())
    with pytest.raises(InvalidToken):
        signer.verify(mangle(token))


def test_expired_tokens_are_rejected():
    signer = AckTokenSigner(SECRET)
    past = datetime.now(UTC) - timedelta(seconds=5)
    with pytest.raises(InvalidToken):
        signer.verify(signer.sign(42, past))
    expires = future(1)
    token = signer.sign(42, expires)
    assert signer.verify(token, now=expires - timedelta(seconds=1)).delivery_id == 42
    with pytest.raises(InvalidToken):
        signer.verify(token, now=expires)
    with pytest.raises(InvalidToken):
        signer.verify(token, now=expires + timedelta(days=1))


def test_a_token_of_another_secret_is_rejected():
    token = AckTokenSigner("another secret " * 4).sign(42, future())
    with pytest.raises(InvalidToken):
        AckTokenSigner(SECRET).verify(token)


def test_key_rotation():
    old = AckTokenSigner(SECRET, current_key_id=1)
    token = old.sign(42, future())
    rotated = AckTokenSigner(SECRET, current_key_id=2, accepted_key_ids=(1,))
    claims = rotated.verify(token)
    assert (claims.delivery_id, claims.key_id) == (42, 1)
    new_token = rotated.sign(43, future())
    assert rotated.verify(new_token).key_id == 2
    with pytest.raises(InvalidToken):
        old.verify(new_token)  # the old signer does not know key 2
    retired = AckTokenSigner(SECRET, current_key_id=2)
    with pytest.raises(InvalidToken):
        retired.verify(token)
    assert retired.verify(new_token).delivery_id == 43
    # The key id byte cannot be rewritten to another accepted key.
    data = bytearray(raw(token))
    data[1] = 2
    with pytest.raises(InvalidToken):
        rotated.verify(encode(bytes(data)))


def test_a_token_carries_only_an_opaque_delivery_id():
    member_id = uuid.uuid4()
    email = "leila@example.org"
    delivery_id = 987_654_321
    token = AckTokenSigner(SECRET).sign(delivery_id, future())
    data = raw(token)
    # version | key id | delivery id (8) | expiry (5) | MAC (16): nothing else fits.
    assert len(data) == 1 + 1 + 8 + 5 + 16
    assert data[0] == 1
    assert data[1] == 1
    assert int.from_bytes(data[2:10], "big") == delivery_id
    assert member_id.bytes not in data
    assert member_id.hex not in token
    assert email.encode() not in data
    assert email not in token
