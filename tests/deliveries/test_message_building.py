"""Message building without I/O: the spliced base64 bodies and webhook JSON are exactly what
encoding each member's message in full gives, and renders are reused only for the same
inputs. Messages are parsed back with the `email` package."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import secrets
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.deliveries import service
from app.deliveries.content import (
    ACK_URL_PLACEHOLDER,
    cached_render,
    incident_summary,
    webhook_timestamp,
)
from app.deliveries.email import Base64Body
from app.models import Briefing, Incident
from app.security import SecretBox, new_webhook_secret

TEXTS = st.lists(
    st.text(alphabet=st.sampled_from(["a", "é", "ب", " ", "\n", ".", "=", "😀"]), max_size=150),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(segments=TEXTS, link=st.text(alphabet="abcdefghijklmnop/:.-_0123456789", max_size=200))
def test_a_spliced_base64_body_is_the_whole_text_encoded(segments: list[str], link: str) -> None:
    text = ACK_URL_PLACEHOLDER.join(segments)
    body = Base64Body.of(text)

    encoded = body.encode(link)

    expected = text.replace(ACK_URL_PLACEHOLDER, link).encode("utf-8")
    assert base64.b64decode(encoded) == expected
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""  # every line ends with CRLF
    assert all(0 < len(line) <= 76 for line in lines[:-1]) or expected == b""
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    # Another link of the same length uses the same plan and still comes out right.
    other = "z" * len(link)
    assert base64.b64decode(body.encode(other)) == text.replace(ACK_URL_PLACEHOLDER, other).encode(
        "utf-8"
    )


def make_incident(**overrides: Any) -> Incident:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "reference": "RRMM-2026-0007",
        "title": 'Tension "quoted" – تحديث',
        "severity": "severe",
        "urgency": "immediate",
        "mode": "actual",
        "countries": ["MA"],
        "themes": ["religious-hatred"],
        "status": "active",
        "responses": ["will-share", "no"],
        "ack_deadline": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Incident(**fields)


def make_briefing(incident: Incident, briefing_id: int = 1) -> Briefing:
    content = {
        language: {
            "subject": f"Subject {language}",
            "body": f"First paragraph ({language}) مرحبا.\n\n.A line with a dot\n\nSecond.",
            "talking_points": ["Point one", 'Point "two"'],
        }
        for language in ("en", "ar")
    }
    return Briefing(
        id=briefing_id,
        version=1,
        kind="declared",
        languages=["en", "ar"],
        content=content,
        incident_id=incident.id,
    )


def builder_and_jobs(
    incident: Incident, briefing: Briefing, channel: str
) -> tuple[service.MessageBuilder, list[service.Job], SecretBox]:
    settings_ = Settings(
        secret_key=secrets.token_hex(32),
        public_url="https://rrmm.example.org",
        mail_from="RRMM <alerts@rrmm.example.org>",
    )
    box = SecretBox.from_settings(settings_)
    jobs = [
        service.Job(
            delivery_id=delivery_id,
            attempt=1,
            channel=channel,
            language=language,
            briefing_id=briefing.id,
            incident_id=incident.id,
            created_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
            member_id=uuid.uuid4(),
            email=f"member{delivery_id}@example.org",
            webhook_url=f"https://hooks.example.org/{delivery_id}",
            webhook_secret=box.encrypt(new_webhook_secret()),
            usable=None,
        )
        for delivery_id, language in ((7, "en"), (8, "ar"), (1234567, "en"))
    ]
    context = service.Context(incidents={incident.id: incident}, briefings={briefing.id: briefing})
    return service.MessageBuilder(settings_, context), jobs, box


def test_each_email_carries_its_own_link_in_both_bodies() -> None:
    incident = make_incident()
    briefing = make_briefing(incident)
    builder, jobs, _ = builder_and_jobs(incident, briefing, "email")
    links = set()

    for job in jobs:
        request = builder.email(job)
        message = email.message_from_bytes(request.message, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert message["To"] == job.email
        assert message["Date"] is not None
        assert len(message.get_all("Date") or []) == 1
        link = f"https://rrmm.example.org/ack/{builder.ack_token(job)}"
        links.add(link)
        rendered = builder.rendered(job)
        for subtype, expected in (("plain", rendered.text), ("html", rendered.html)):
            part = message.get_body((subtype,))
            assert part is not None
            assert part["Content-Transfer-Encoding"] == "base64"
            assert part.get_content() == expected.replace(ACK_URL_PLACEHOLDER, link)
        # Ready for the wire: CRLF only, no line the SMTP sender would have to dot-stuff.
        assert request.message.count(b"\n") == request.message.count(b"\r\n")
        assert b"\n." not in request.message
    assert len(links) == len(jobs)


def test_webhook_bodies_are_the_events_encoded_in_full() -> None:
    for deadline in (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), None):
        incident = make_incident(ack_deadline=deadline)
        briefing = make_briefing(incident)
        builder, jobs, box = builder_and_jobs(incident, briefing, "webhook")
        now = datetime.now(UTC)
        for job in jobs:
            request = builder.webhook(job, now)
            token = builder.ack_token(job)
            event = {
                "type": "incident.declared",
                "timestamp": webhook_timestamp(now),
                "data": {
                    "incident": incident_summary(incident),
                    "briefing": {**builder.rendered(job).webhook_briefing, "kind": "declared"},
                    "ack": {
                        "url": "https://rrmm.example.org/v1/acks",
                        "page": f"https://rrmm.example.org/ack/{token}",
                        "token": token,
                        "deadline": "2026-03-01T12:00:00Z" if deadline else None,
                        "responses": ["will-share", "no"],
                    },
                },
            }
            assert (
                request.body
                == json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
            )
            assert request.headers["webhook-id"] == f"rrmm_dlv_{job.delivery_id}"
            # Signed with the member's own secret, over exactly these bytes.
            assert job.webhook_secret is not None
            secret = box.decrypt(job.webhook_secret)
            assert Webhook(secret).verify(request.body, request.headers) == event


def test_renders_are_reused_only_for_the_same_inputs() -> None:
    incident = make_incident()
    briefing = make_briefing(incident)

    key, first = cached_render(incident, briefing, "en")
    again_key, again = cached_render(incident, briefing, "en")
    assert again is first
    assert again_key == key
    _, arabic = cached_render(incident, briefing, "ar")
    assert arabic is not first

    incident.severity = "moderate"  # what the rendering shows changed: rendered anew
    changed_key, changed = cached_render(incident, briefing, "en")
    assert changed is not first
    assert changed_key != key
    other = make_briefing(make_incident(), briefing_id=1)  # same row id, another incident
    assert cached_render(incident, other, "en")[1] is not first
