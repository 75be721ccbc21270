"""Email messages, built once per (briefing version, language) and addressed per member.

Building an `EmailMessage` per member costs ~0.4–1 ms (ECOSYSTEM.md), which alone would
take seconds for a network. So the headers that all readers share are encoded once with
the standard library, and the two bodies are base64-encoded once per (briefing version,
language) too: per member only the `To`, `Message-ID` and threading headers are written
and the few base64 lines that hold the member's acknowledgement link are encoded. The
result is an ordinary `multipart/alternative` message, CRLF throughout and no line
starting with a dot (base64 and headers never do), so the SMTP sender sends it as it is;
tests parse it back with the `email` package.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

from app.deliveries.content import ACK_URL_PLACEHOLDER, RenderedBriefing

_UNSAFE_HEADER_VALUE = re.compile(r"[\r\n\x00]")
# Input bytes per base64 line: 57 bytes make the 76 characters MIME allows.
_LINE_BYTES = 57
# How much of the per-process template cache is kept (a few briefings × languages).
_CACHE_LIMIT = 256


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


def date_header(moment: datetime) -> bytes:
    """The `Date:` line, written per batch (the rest of the shared headers is cached)."""
    return f"Date: {format_datetime(moment)}\r\n".encode()


def _base64_line(raw: bytes) -> bytes:
    return binascii.b2a_base64(raw, newline=False) + b"\r\n"


# A piece of a base64 line that holds (part of) the link: bytes of the body as they are,
# or the slice [start, end) of the link.
_Piece = bytes | tuple[int, int]


@dataclass(frozen=True)
class _Plan:
    """A body's base64 lines for links of one length: runs of lines encoded once
    (`runs[i]` comes before `linked[i]`, the last run after them all), and the lines that
    hold the link, as pieces to assemble per member."""

    runs: tuple[bytes, ...]
    linked: tuple[tuple[_Piece, ...], ...]


@dataclass(frozen=True)
class Base64Body:
    """A text with the acknowledgement placeholder in it, base64-encoded once; `encode`
    splices a member's link into the few lines it falls on. Base64 keeps Arabic at 4/3
    of its UTF-8 size (quoted-printable would triple it) and is 7-bit safe for any relay."""

    segments: tuple[bytes, ...]  # the UTF-8 text split at the placeholder
    _plans: dict[int, _Plan] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, text: str) -> Base64Body:
        return cls(tuple(part.encode("utf-8") for part in text.split(ACK_URL_PLACEHOLDER)))

    def _plan(self, link_length: int) -> _Plan:
        plan = self._plans.get(link_length)
        if plan is not None:
            return plan
        # Where each link falls in the body, and the body with a stand-in for each.
        spans: list[tuple[int, int]] = []
        stream = bytearray()
        for index, segment in enumerate(self.segments):
            if index:
                spans.append((len(stream), len(stream) + link_length))
                stream += b"\x00" * link_length
            stream += segment
        runs: list[bytes] = []
        linked: list[tuple[_Piece, ...]] = []
        run: list[bytes] = []
        for start in range(0, len(stream), _LINE_BYTES):
            end = min(start + _LINE_BYTES, len(stream))
            overlapping = [(a, b) for a, b in spans if a < end and b > start]
            if not overlapping:
                run.append(_base64_line(bytes(stream[start:end])))
                continue
            pieces: list[_Piece] = []
            at = start
            for a, b in overlapping:
                if a > at:
                    pieces.append(bytes(stream[at:a]))
                pieces.append((max(a, start) - a, min(b, end) - a))
                at = min(b, end)
            if at < end:
                pieces.append(bytes(stream[at:end]))
            runs.append(b"".join(run))
            linked.append(tuple(pieces))
            run = []
        runs.append(b"".join(run))
        plan = _Plan(tuple(runs), tuple(linked))
        self._plans[link_length] = plan
        return plan

    def encode(self, link: str) -> bytes:
        """The body with `link` in place of the placeholder, as base64 lines (CRLF)."""
        url = link.encode("utf-8")
        plan = self._plan(len(url))
        if not plan.linked:
            return plan.runs[0]
        out = [plan.runs[0]]
        for pieces, run in zip(plan.linked, plan.runs[1:], strict=True):
            raw = b"".join(p if isinstance(p, bytes) else url[p[0] : p[1]] for p in pieces)
            out.append(_base64_line(raw))
            out.append(run)
        return b"".join(out)


@dataclass(frozen=True)
class EmailTemplate:
    """The shared part of one briefing version in one language (without `Date:`)."""

    shared_headers: bytes
    text: Base64Body
    html: Base64Body
    boundary: str
    sender_address: str


def build_template(
    rendered: RenderedBriefing, *, mail_from: str, auto_submitted: str = "auto-generated"
) -> EmailTemplate:
    shared = EmailMessage(policy=SMTP)
    shared["From"] = safe_header_value(mail_from)
    shared["Subject"] = safe_header_value(rendered.subject)
    shared["Auto-Submitted"] = auto_submitted
    shared["X-Auto-Response-Suppress"] = "All"
    shared["Content-Language"] = rendered.language
    shared["MIME-Version"] = "1.0"
    headers = shared.as_bytes(policy=SMTP).split(b"\r\n\r\n", 1)[0] + b"\r\n"
    boundary = "=_rrmm_" + hashlib.sha256(rendered.html.encode()).hexdigest()[:24]
    return EmailTemplate(
        shared_headers=headers,
        text=Base64Body.of(rendered.text),
        html=Base64Body.of(rendered.html),
        boundary=boundary,
        sender_address=parseaddr(mail_from)[1],
    )


_templates: dict[tuple[Hashable, str], EmailTemplate] = {}


def cached_template(rendered: RenderedBriefing, *, key: Hashable, mail_from: str) -> EmailTemplate:
    """`build_template`, once per process for each rendering (`key`: what the rendering
    was made from, see `content.render_key`)."""
    key = (key, mail_from)
    template = _templates.get(key)
    if template is None:
        if len(_templates) >= _CACHE_LIMIT:
            _templates.clear()
        template = _templates[key] = build_template(rendered, mail_from=mail_from)
    return template


def address_member(
    template: EmailTemplate,
    *,
    date: bytes,
    to: str,
    message_id: str,
    ack_url: str,
    references: list[str],
) -> bytes:
    """The complete message for one member, as bytes ready for SMTP (`date` from
    `date_header`).

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
            date,
            "\r\n".join(addressing).encode("utf-8"),
            b"\r\n\r\n--",
            boundary,
            b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            template.text.encode(ack_url),
            b"--",
            boundary,
            b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            template.html.encode(ack_url),
            b"--",
            boundary,
            b"--\r\n",
        ]
    )


def mail_domain(mail_from: str) -> str:
    """The domain of the sender address (`RRMM <alerts@rrmm.example>` → `rrmm.example`), for
    Message-IDs."""
    return parseaddr(mail_from)[1].rpartition("@")[2] or "rrmm.invalid"
