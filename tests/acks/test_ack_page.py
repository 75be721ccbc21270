"""The acknowledgement page: a real browser on a real email's link, the page's languages,
headers and form, and every way a token can be wrong."""

from __future__ import annotations

import email
import email.policy
import html
import secrets
import string
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.deliveries.tokens import AckTokenSigner
from app.netutil import wait_until
from tests.acks.conftest import (
    SECURITY_HEADERS,
    Api,
    HttpResponse,
    Live,
    ack_settings_from,
    acks_of,
    briefing,
    count_acks,
    delivery_of,
    encode_token,
    sign,
    token_bytes,
)
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PNG_SIGNATURE
from tests.support.factories import assert_problem, make_client
from tests.support.sinks import SmtpSink
from tests.support.worker import WorkerProcess

BASE64URL = set(string.ascii_letters + string.digits + "-_")

client_for = contextmanager(make_client)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)


def hrefs(document: str) -> list[str]:
    parser = _Links()
    parser.feed(document)
    parser.close()
    return parser.hrefs


def assert_page_headers(response: HttpResponse) -> None:
    assert response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    csp = [part.strip() for part in response.headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert not any("script-src" in part for part in csp)


# ---------------------------------------------------------------------------- a real browser


@pytest.mark.slow
def test_an_arabic_member_answers_from_the_email_in_a_real_browser(
    live: Live,
    live_api: Api,
    live_worker: WorkerProcess,
    smtp: SmtpSink,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    member = live_api.member(languages=["ar"], name="Amina Haddad", country="EG")
    incident = live_api.declare([member])
    wait_until(lambda: smtp.to(member["email"]), 60, f"the briefing email\n{live_worker.log()}")

    [mail] = smtp.to(member["email"])
    message = email.message_from_bytes(mail.raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(("html",))
    assert html_part is not None
    links = {href for href in hrefs(html_part.get_content()) if "/ack/" in href}
    assert len(links) == 1, links
    [link] = links
    assert link.startswith(f"{live.url}/ack/")
    text_part = message.get_body(("plain",))
    assert text_part is not None
    assert link in text_part.get_content()

    # The token carries the email delivery's id and nothing about the member.
    token = link.rsplit("/", 1)[1]
    raw = token_bytes(token)
    delivery = delivery_of(session_factory, incident, member, channel="email")
    assert len(raw) == 1 + 1 + 8 + 5 + 16
    assert (raw[0], raw[1], int.from_bytes(raw[2:10], "big")) == (1, 1, delivery.id)
    assert uuid.UUID(member["id"]).bytes not in raw
    for secret in (member["id"], member["id"].replace("-", ""), member["email"]):
        assert secret not in token

    # A mail scanner fetches the link first (HEAD, then GET): nothing is recorded.
    scanner_headers = {"User-Agent": "Mozilla/5.0 (compatible; LinkScanner/2.1)"}
    with httpx.Client(headers=scanner_headers, timeout=10) as scanner:
        head = scanner.head(link)
        assert head.status_code == 200
        assert head.content == b""
        got = scanner.get(link)
        assert got.status_code == 200
        assert_page_headers(got)
        assert 'dir="rtl"' in got.text
    assert count_acks(session_factory) == (0, 0)

    origin = urlsplit(live.url)
    requested: list[str] = []
    screenshot = tmp_path / "ack-page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(locale="ar")
            page.on("request", lambda request: requested.append(request.url))
            opened = page.goto(link)
            assert opened is not None
            assert opened.status == 200
            expect(page.locator("html[dir=rtl]")).to_have_count(1)
            assert page.locator("html").get_attribute("lang") == "ar"
            expect(page.locator('button[name="response"]')).to_have_count(4)
            assert count_acks(session_factory) == (0, 0)  # the browser's GET changed nothing

            page.locator('button[name="response"][value="will_engage"]').click()
            confirmation = page.locator("#confirmation")
            expect(confirmation).to_be_visible()
            expect(confirmation).to_contain_text("سأتحدث أو أنشر")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert len(requested) >= 2  # the page, then the form's POST
    for url in requested:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url

    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000

    [ack] = acks_of(session_factory)
    assert ack.member_id == uuid.UUID(member["id"])
    assert ack.delivery_id == delivery.id
    assert (ack.response, ack.route, ack.channel) == ("will_engage", "page", "email")
    assert (ack.language, ack.briefing_version, ack.late) == ("ar", 1, False)
    assert ack.delay_seconds is not None
    assert ack.delay_seconds >= 0
    [answer] = live_api.history(incident["id"], member["id"])
    assert (answer["route"], answer["language"], answer["briefing_version"]) == ("page", "ar", 1)
    assert answer["delay_seconds"] >= 0


# ---------------------------------------------------------------------------- page behaviour


@dataclass
class Briefed:
    incident: dict[str, Any]
    members: dict[str, dict[str, Any]]  # by the member's language
    tokens: dict[str, str]


@pytest.fixture
def briefed(api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]) -> Briefed:
    """An incident briefed (ledger rows, no worker) to an en, a fr, an ar and a de reader;
    the briefing exists in German too, so the German reader's delivery is in German."""
    members = {lang: api.member(languages=[lang], name=f"Reader {lang}") for lang in LANGUAGES}
    incident = api.declare(list(members.values()), briefing=briefing("en", "fr", "ar", "de"))
    tokens = {
        lang: sign(ack_settings, delivery_of(session_factory, incident, member).id)
        for lang, member in members.items()
    }
    return Briefed(incident, members, tokens)


LANGUAGES = ("en", "fr", "ar", "de")
EXPECTED = {
    # the delivery's language → (lang shown, dir, a question, the will_engage label)
    "en": ("en", "ltr", "Please tell us what you will do:", "I will speak or publish"),
    "fr": ("fr", "ltr", "Merci de nous dire ce que vous ferez :", "Je vais m'exprimer ou publier"),
    "ar": ("ar", "rtl", "يرجى إخبارنا بما ستفعله:", "سأتحدث أو أنشر"),
    "de": ("en", "ltr", "Please tell us what you will do:", "I will speak or publish"),
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_page_speaks_the_members_language_and_loads_nothing(
    ack_client: TestClient,
    briefed: Briefed,
    session_factory: sessionmaker[Session],
    language: str,
) -> None:
    lang, direction, question, will_engage = EXPECTED[language]
    response = ack_client.get(f"/ack/{briefed.tokens[language]}")
    assert response.status_code == 200, response.text
    assert_page_headers(response)
    page = response.text
    assert f'<html lang="{lang}" dir="{direction}">' in page
    text = html.unescape(page)
    assert question in text
    assert will_engage in text
    assert briefed.incident["reference"] in text
    # Headed by the member's own briefing, not by the operators' title (in English here).
    assert f"<h1>Subject ({language})</h1>" in page
    assert briefed.incident["title"] not in text
    for value in ("acknowledged", "will_engage", "unavailable", "need_briefing_call"):
        assert f'name="response" value="{value}"' in page
    assert "<script" not in page.lower()
    assert "http" not in page.lower()  # no absolute URL: nothing from anywhere else
    assert "//" not in page
    assert "<link" not in page.lower()
    assert "<img" not in page.lower()
    assert 'action=""' in page  # the form posts back to the same link

    head = ack_client.head(f"/ack/{briefed.tokens[language]}")
    assert head.status_code == 200
    assert_page_headers(head)
    assert count_acks(session_factory) == (0, 0)


def test_the_form_records_an_answer_and_a_change_keeps_the_history(
    ack_client: TestClient,
    api: Api,
    briefed: Briefed,
    session_factory: sessionmaker[Session],
) -> None:
    token = briefed.tokens["fr"]
    member = briefed.members["fr"]
    incident_id = briefed.incident["id"]

    first = ack_client.post(
        f"/ack/{token}", data={"response": "will_engage", "comment": "  Édito demain matin  "}
    )
    assert first.status_code == 200, first.text
    assert_page_headers(first)
    assert 'id="confirmation"' in first.text
    assert "<h1>Subject (fr)</h1>" in first.text
    assert "Merci. Votre réponse est enregistrée" in html.unescape(first.text)
    assert "Je vais m'exprimer ou publier" in html.unescape(first.text)

    second = ack_client.post(f"/ack/{token}", data={"response": "unavailable"})
    assert second.status_code == 200, second.text
    assert "Je ne suis pas disponible" in html.unescape(second.text)

    history = api.history(incident_id, member["id"])
    assert [a["response"] for a in history] == ["will_engage", "unavailable"]
    assert [a["comment"] for a in history] == ["Édito demain matin", None]
    assert {(a["route"], a["language"], a["channel"], a["briefing_version"]) for a in history} == {
        ("page", "fr", "email", 1)
    }
    current = api.current(incident_id)["items"]
    assert len(current) == 1
    assert current[0]["member"]["id"] == member["id"]
    assert current[0]["answer"]["response"] == "unavailable"
    assert current[0]["answer"]["id"] == history[-1]["id"]
    assert _instant(current[0]["first_answered_at"]) == _instant(history[0]["answered_at"])

    # The page now shows the current answer; other members are untouched.
    page = ack_client.get(f"/ack/{token}")
    assert "Votre réponse actuelle" in html.unescape(page.text)
    assert 'value="unavailable" class="current"' in page.text
    assert count_acks(session_factory) == (2, 1)


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    "form",
    [
        {"response": "launch_the_campaign"},
        {"response": "WILL_ENGAGE"},
        {"response": ""},
        {},
        {"response": "will_engage", "comment": "x" * 2001},
        {"response": "will_engage", "comment": "x" * 4001},
    ],
    ids=["unknown", "case", "empty", "missing", "comment-2001", "comment-4001"],
)
def test_the_form_refuses_what_it_cannot_record(
    ack_client: TestClient,
    briefed: Briefed,
    session_factory: sessionmaker[Session],
    form: dict[str, str],
) -> None:
    response = ack_client.post(f"/ack/{briefed.tokens['en']}", data=form)
    assert response.status_code == 422, response.text
    if response.headers["content-type"].startswith("text/html"):
        # The page again, with the reason, so the member can pick a valid answer.
        assert_page_headers(response)
        assert 'role="alert"' in response.text
        assert 'name="response" value="will_engage"' in response.text
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
    assert count_acks(session_factory) == (0, 0)


def test_a_comment_of_exactly_the_limit_is_recorded(
    ack_client: TestClient, briefed: Briefed, session_factory: sessionmaker[Session]
) -> None:
    comment = "é" * 2000
    response = ack_client.post(
        f"/ack/{briefed.tokens['en']}", data={"response": "acknowledged", "comment": comment}
    )
    assert response.status_code == 200, response.text
    [ack] = acks_of(session_factory)
    assert ack.comment == comment


@pytest.mark.usefixtures("engine")
def test_the_page_is_rate_limited_per_address(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    with client_for(ack_settings_from(settings, ack_rate_limit="5/minute")) as client:
        for _ in range(5):
            assert client.get("/ack/not-a-token").status_code == 404
        limited = client.get("/ack/not-a-token")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        if limited.headers["content-type"].startswith("application/problem+json"):
            assert limited.json()["status"] == 429
        else:
            assert_page_headers(limited)
        # The form has its own budget, limited the same way.
        for _ in range(5):
            assert client.post("/ack/not-a-token", data={"response": "x"}).status_code == 404
        posted = client.post("/ack/not-a-token", data={"response": "x"})
        assert posted.status_code == 429
        assert int(posted.headers["retry-after"]) >= 1
    assert count_acks(session_factory) == (0, 0)


# ---------------------------------------------------------------------------- token attacks


@dataclass
class Target:
    incident: dict[str, Any]
    member: dict[str, Any]
    other: dict[str, Any]
    delivery_id: int
    other_delivery_id: int
    token: str
    other_token: str


@pytest.fixture
def target(api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]) -> Target:
    member = api.member(languages=["en"], name="Target Member")
    other = api.member(languages=["fr"], name="Other Member")
    incident = api.declare([member, other])
    delivery_id = delivery_of(session_factory, incident, member).id
    other_delivery_id = delivery_of(session_factory, incident, other).id
    return Target(
        incident,
        member,
        other,
        delivery_id,
        other_delivery_id,
        sign(ack_settings, delivery_id),
        sign(ack_settings, other_delivery_id),
    )


class Refusals:
    """Asserts that a token is refused the same way everywhere: one page, one problem."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        reference = client.get("/ack/garbage")
        assert reference.status_code == 404
        assert_page_headers(reference)
        assert "Link not valid" in reference.text
        assert "garbage" not in reference.text
        self.page = reference.content
        problem = client.post("/v1/acks", json={"token": "garbage", "response": "will_engage"})
        self.problem = _problem_404(problem)

    def check(self, token: str, *, form: bool = True) -> None:
        path = "/ack/" + quote(token, safe="")
        got = self.client.get(path)
        assert (got.status_code, got.content) == (404, self.page), token
        assert_page_headers(got)
        head = self.client.head(path)
        assert (head.status_code, head.content) == (404, b""), token
        if form:
            posted = self.client.post(path, data={"response": "will_engage", "comment": "hi"})
            assert (posted.status_code, posted.content) == (404, self.page), token
            assert_page_headers(posted)
        answer = self.client.post("/v1/acks", json={"token": token, "response": "will_engage"})
        assert _problem_404(answer) == self.problem, token


def _problem_404(response: HttpResponse) -> dict[str, Any]:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == 404
    assert body["detail"] == "link not valid"
    assert "errors" not in body
    return body


def _bit_flips(token: str) -> list[str]:
    raw = token_bytes(token)
    flipped = []
    for position in range(len(raw)):
        for bit in range(8):
            tampered = bytearray(raw)
            tampered[position] ^= 1 << bit
            flipped.append(encode_token(bytes(tampered)))
    return flipped


def test_every_bit_flip_of_a_token_gets_the_same_404(
    ack_client: TestClient, target: Target, session_factory: sessionmaker[Session]
) -> None:
    refusals = Refusals(ack_client)
    flips = _bit_flips(target.token)
    assert len(flips) == 31 * 8
    for n, token in enumerate(flips):
        refusals.check(token, form=n % 6 == 0)  # the form on a sample of 42 positions
    assert count_acks(session_factory) == (0, 0)
    assert ack_client.get(f"/ack/{target.token}").status_code == 200  # the original still works


def test_truncated_extended_garbage_expired_and_foreign_tokens_get_the_same_404(
    ack_client: TestClient,
    ack_settings: Settings,
    target: Target,
    session_factory: sessionmaker[Session],
) -> None:
    refusals = Refusals(ack_client)
    token = target.token
    past = datetime.now(UTC) - timedelta(seconds=2)
    raw = token_bytes(token)
    cases = {
        "truncated by 1": token[:-1],
        "truncated by 2": token[:-2],
        "truncated by 4": token[:-4],
        "half": token[: len(token) // 2],
        "body without MAC": encode_token(raw[:15]),
        "extended by A": token + "A",
        "extended by AAAA": token + "AAAA",
        "doubled": token + token,
        "MAC of zeros": encode_token(raw[:15] + bytes(16)),
        "zeros": encode_token(bytes(31)),
        "garbage": "garbage",
        "not base64": "!!!!not base64!!!!",
        "non-ascii": "é" * 42,
        "swapped case": token.swapcase(),
        "reversed": token[::-1],
        "one char": "A",
        "padding only": "====",
        "space": " ",
        "dash": "-",
        "nul": "\x00",
        "sql": "' OR 1=1 --",
        "long": "A" * 200,
        "expired": sign(ack_settings, target.delivery_id, past),
        "other secret": AckTokenSigner(secrets.token_hex(32)).sign(
            target.delivery_id, datetime.now(UTC) + timedelta(days=1)
        ),
        "retired key id 2": AckTokenSigner(ack_settings.secret, current_key_id=2).sign(
            target.delivery_id, datetime.now(UTC) + timedelta(days=1)
        ),
        "unknown delivery": sign(ack_settings, target.other_delivery_id + 10_000),
        "version 2": _resigned(ack_settings, raw, version=2),
    }
    for name, case in cases.items():
        try:
            refusals.check(case)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert count_acks(session_factory) == (0, 0)


def _resigned(settings: Settings, raw: bytes, *, version: int) -> str:
    """The same claims under another format version, correctly MACed with the real key."""
    import hashlib
    import hmac

    from app.security import derive_key

    body = bytes([version]) + raw[1:15]
    key = derive_key(settings.secret, f"ack-tokens/{raw[1]}")
    return encode_token(body + hmac.new(key, body, hashlib.sha256).digest()[:16])


def test_oversized_tokens_are_refused_without_a_hint(
    ack_client: TestClient, target: Target, session_factory: sessionmaker[Session]
) -> None:
    refusals = Refusals(ack_client)
    for token in (target.token + "A" * 200, "A" * 5000):
        got = ack_client.get(f"/ack/{token}")
        assert (got.status_code, got.content) == (404, refusals.page)
        posted = ack_client.post(f"/ack/{token}", data={"response": "will_engage"})
        assert (posted.status_code, posted.content) == (404, refusals.page)
        # The JSON route documents the token as at most 200 characters: a schema error that
        # names the field and says nothing about whether the token was ever valid.
        answer = ack_client.post("/v1/acks", json={"token": token, "response": "will_engage"})
        if answer.status_code == 404:
            assert _problem_404(answer) == refusals.problem
        else:
            body = assert_problem(answer, 422, "token")
            assert "link not valid" not in answer.text
            assert token not in str(body)
    assert count_acks(session_factory) == (0, 0)


def test_only_the_canonical_spelling_of_a_token_is_accepted(
    ack_client: TestClient, target: Target, session_factory: sessionmaker[Session]
) -> None:
    """Single-bit flips of the token's characters (those that stay in the base64url
    alphabet, so still a plausible link), at 40 positions across it, padding appended, the
    standard alphabet's `+` for `-`: none is the issued token, none may be accepted."""
    refusals = Refusals(ack_client)
    token = target.token
    positions = sorted({round(i * (len(token) - 1) / 39) for i in range(40)})
    assert len(positions) == 40
    assert positions[-1] == len(token) - 1
    variants: dict[str, str] = {}
    for position in positions:
        for bit in range(7):
            char = chr(ord(token[position]) ^ (1 << bit))
            if char in BASE64URL:
                variants[f"char {position} bit {bit}"] = (
                    token[:position] + char + token[position + 1 :]
                )
    variants["padded ="] = token + "="
    variants["padded =="] = token + "=="
    if "-" in token:
        variants["+ for -"] = token.replace("-", "+")
    accepted = []
    for name, variant in variants.items():
        assert variant != token
        response = ack_client.get("/ack/" + quote(variant, safe=""))
        if response.status_code != 404 or response.content != refusals.page:
            accepted.append(f"{name}: {variant!r} → {response.status_code}")
    assert not accepted, "tokens other than the issued one were accepted:\n" + "\n".join(accepted)
    assert count_acks(session_factory) == (0, 0)


def test_a_token_answers_only_for_its_own_delivery(
    ack_client: TestClient, api: Api, target: Target, session_factory: sessionmaker[Session]
) -> None:
    form = ack_client.post(f"/ack/{target.other_token}", data={"response": "unavailable"})
    assert form.status_code == 200, form.text
    assert "Je ne suis pas disponible" in html.unescape(form.text)  # the other member's page
    answer = ack_client.post(
        "/v1/acks", json={"token": target.other_token, "response": "will_engage"}
    )
    assert answer.status_code == 200, answer.text

    assert acks_of(session_factory, target.member["id"]) == []
    others = acks_of(session_factory, target.other["id"])
    assert [(a.response, a.delivery_id) for a in others] == [
        ("unavailable", target.other_delivery_id),
        ("will_engage", target.other_delivery_id),
    ]
    assert api.history(target.incident["id"], target.member["id"]) == []
    [current] = api.current(target.incident["id"])["items"]
    assert current["member"]["id"] == target.other["id"]
    assert "Your current answer" not in ack_client.get(f"/ack/{target.token}").text


@pytest.mark.usefixtures("engine")
def test_rotating_the_token_key(
    settings: Settings, target: Target, session_factory: sessionmaker[Session]
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    key1 = AckTokenSigner(settings.secret, current_key_id=1).sign(target.delivery_id, later)
    key2 = AckTokenSigner(settings.secret, current_key_id=2).sign(target.delivery_id, later)

    # Key 2 signs, key 1 is still accepted: links already sent keep working.
    rotating = ack_settings_from(settings, ack_token_key_id=2, ack_token_accepted_key_ids=[1])
    with client_for(rotating) as client:
        for token in (key1, key2):
            assert client.get(f"/ack/{token}").status_code == 200
        answer = client.post("/v1/acks", json={"token": key1, "response": "acknowledged"})
        assert answer.status_code == 200, answer.text
        form = client.post(f"/ack/{key2}", data={"response": "will_engage"})
        assert form.status_code == 200, form.text

    # Key 1 retired: its links are refused like any invalid link; key 2's still work.
    retired = ack_settings_from(settings, ack_token_key_id=2, ack_token_accepted_key_ids=[])
    with client_for(retired) as client:
        Refusals(client).check(key1)
        assert client.get(f"/ack/{key2}").status_code == 200

    # An app that only knows key 1 refuses key 2's tokens.
    with client_for(ack_settings_from(settings)) as client:
        Refusals(client).check(key2)
        assert client.get(f"/ack/{key1}").status_code == 200

    history = acks_of(session_factory, target.member["id"])
    assert [(a.response, a.route) for a in history] == [
        ("acknowledged", "api"),
        ("will_engage", "page"),
    ]


def test_the_token_carries_only_an_opaque_delivery_id(
    target: Target, ack_settings: Settings
) -> None:
    raw = token_bytes(target.token)
    assert len(raw) == 1 + 1 + 8 + 5 + 16
    assert raw[0] == 1
    assert raw[1] == ack_settings.ack_token_key_id
    assert int.from_bytes(raw[2:10], "big") == target.delivery_id
    expiry = datetime.fromtimestamp(int.from_bytes(raw[10:15], "big"), UTC)
    assert timedelta(days=29) < expiry - datetime.now(UTC) <= timedelta(days=30)
    member_id = uuid.UUID(target.member["id"])
    for needle in (member_id.bytes, target.member["email"].encode(), b"@"):
        assert needle not in raw[:15]
    for text in (str(member_id), member_id.hex, target.member["email"]):
        assert text not in target.token
    assert set(target.token) <= BASE64URL


def test_a_deleted_members_link_is_no_longer_valid(
    ack_client: TestClient, api: Api, target: Target, session_factory: sessionmaker[Session]
) -> None:
    refusals = Refusals(ack_client)
    assert ack_client.get(f"/ack/{target.token}").status_code == 200
    deleted = ack_client.delete(f"/v1/members/{target.member['id']}", headers=api.headers)
    assert deleted.status_code == 204, deleted.text
    refusals.check(target.token)
    assert count_acks(session_factory) == (0, 0)
