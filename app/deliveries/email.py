"""Email messages, built once per (briefing version, language) and addressed per member.

Building an `EmailMessage` per member costs ~0.4–1 ms (ECOSYSTEM.md), which alone would
take seconds for a network. So the headers that all readers share are encoded once with
the standard library, and per member only the `To`, `Message-ID` and threading headers
are added and the two bodies (with the member's acknowledgement link) base64-encoded.
The result is an ordinary `multipart/alternative` message; tests parse it back with the
`email` package.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

from app.deliveries.content import ACK_URL_PLACEHOLDER, RenderedBriefing
from app.models.base import utcnow

_UNSAFE_HEADER_VALUE = re.compile(r"[\r\n\x00]")


class UnsafeHeader(ValueError):
    """A value that would reach a mail header contains CR, LF or NUL."""


def safe_header_value(value: str) -> str:
    if _UNSAFE_HEADER_VALUE.search(value):
        raise UnsafeHeader("CR, LF or NUL in a header value")
    return value


def message_id(delivery_id: int, domain: str) -> str:
    """Stable across retries: derived from the ledger row only."""
    return f"<rrmm.delivery.{delivery_id}@{domain}>"


def thread_id(incident_id: str, domain: str) -> str:
    """The id every message of an incident refers to, so mail clients thread them."""
    digest = hashlib.sha256(incident_id.encode()).hexdigest()[:24]
    return f"<rrmm.incident.{digest}@{domain}>"


@dataclass(frozen=True)
class EmailTemplate:
    """The shared part of one briefing version in one language."""

    shared_headers: bytes
    text: str
    html: str
    boundary: str
    sender_address: str


def build_template(
    rendered: RenderedBriefing, *, mail_from: str, auto_submitted: str = "auto-generated"
) -> EmailTemplate:
    shared = EmailMessage(policy=SMTP)
    shared["From"] = safe_header_value(mail_from)
    shared["Subject"] = safe_header_value(rendered.subject)
    shared["Date"] = format_datetime(utcnow())
    shared["Auto-Submitted"] = auto_submitted
    shared["X-Auto-Response-Suppress"] = "All"
    shared["Content-Language"] = rendered.language
    shared["MIME-Version"] = "1.0"
    headers = shared.as_bytes(policy=SMTP).split(b"\r\n\r\n", 1)[0] + b"\r\n"
    boundary = "=_rrmm_" + hashlib.sha256(rendered.html.encode()).hexdigest()[:24]
    return EmailTemplate(
        shared_headers=headers,
        text=rendered.text,
        html=rendered.html,
        boundary=boundary,
        sender_address=parseaddr(mail_from)[1],
    )


def _base64_lines(text: str) -> bytes:
    return base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")


def address_member(
    template: EmailTemplate,
    *,
    to: str,
    message_id: str,
    ack_url: str,
    references: list[str],
) -> bytes:
    """The complete message for one member, as bytes ready for SMTP.

    `references` threads it: the incident's thread id, then (for later versions) the
    member's first briefing, which is also what it replies to.
    """
    addressing = [
        f"To: {safe_header_value(to)}",
        f"Message-ID: {safe_header_value(message_id)}",
    ]
    if references:
        addressing.append(f"References: {safe_header_value(' '.join(references))}")
    if len(references) > 1:
        addressing.append(f"In-Reply-To: {safe_header_value(references[-1])}")
    addressing.append(f'Content-Type: multipart/alternative; boundary="{template.boundary}"')
    boundary = template.boundary.encode()
    return b"".join(
        [
            template.shared_headers,
            "\r\n".join(addressing).encode("utf-8"),
            b"\r\n\r\n--",
            boundary,
            b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            _base64_lines(template.text.replace(ACK_URL_PLACEHOLDER, ack_url)),
            b"--",
            boundary,
            b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            _base64_lines(template.html.replace(ACK_URL_PLACEHOLDER, ack_url)),
            b"--",
            boundary,
            b"--\r\n",
        ]
    )
