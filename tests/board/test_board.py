"""The status board: a shell that holds no data behind strict headers, its own script and
stylesheet, and a real browser that watches the figures change as answers arrive.

Deliveries are moved through the ledger (`ledger.transition`) instead of by a worker; answers
are posted to `POST /v1/acks` with tokens the app's own signer issues for real delivery ids.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy.orm import Session, sessionmaker

from app.models import Role
from app.vocabulary import DeliveryStatus
from tests.acks.conftest import Api, Live, delivery_of, sign
from tests.incidents.test_status import move
from tests.support.browser import PNG_SIGNATURE, chromium
from tests.support.factories import PUBLIC_WEBHOOK, member_payload

WAIT_MS = 30_000  # the board polls every 2 s; a loaded CI machine gets plenty of slack
PAGE_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}
CSP_DIRECTIVES = {
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
}


def board_path(incident_id: str) -> str:
    return f"/board/incidents/{incident_id}"


def assert_page_headers(response: Any) -> None:
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in PAGE_HEADERS.items():
        assert response.headers[name] == value, name
    csp = response.headers["content-security-policy"]
    assert {part.strip() for part in csp.split(";")} == CSP_DIRECTIVES
    assert "unsafe" not in csp


class _Markup(HTMLParser):
    """Every tag with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_endtag(self, _tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style") and data.strip():
            self.inline.append(data)


def markup(document: str) -> _Markup:
    parser = _Markup()
    parser.feed(document)
    parser.close()
    return parser


def asset_urls(page_url: str, document: str) -> list[str]:
    return [
        urljoin(page_url, value)
        for tag, attrs in markup(document).tags
        for name, value in attrs.items()
        if name in ("src", "href") and value and tag in ("script", "link")
    ]


# ---------------------------------------------------------------------------- the shell


@pytest.fixture
def declared(client: TestClient, operator: dict[str, str]) -> dict[str, Any]:
    member = client.post(
        "/v1/members", json=member_payload(name="Salma Ouazzani-Shell"), headers=operator
    )
    assert member.status_code == 201, member.text
    incident = client.post(
        "/v1/incidents",
        json={
            "title": "Unrest after the sermon broadcast",
            "severity": "severe",
            "urgency": "immediate",
            "audience": {"member_ids": [member.json()["id"]]},
            "briefing": {"en": {"subject": "Call for calm", "body": "Please call for calm."}},
        },
        headers=operator,
    )
    assert incident.status_code == 202, incident.text
    body: dict[str, Any] = incident.json()
    body["member"] = member.json()
    return body


def test_the_shell_holds_no_data_and_needs_no_key(
    client: TestClient, declared: dict[str, Any], api_keys: dict[Role, str]
) -> None:
    real = client.get(board_path(declared["id"]))
    assert real.status_code == 200, real.text
    assert_page_headers(real)

    # The same bytes for an incident that exists, one that does not, with or without a key:
    # the page tells nobody anything, not even whether an id exists.
    unknown = client.get(board_path(str(uuid.uuid4())))
    upper = client.get(board_path(declared["id"].upper()))
    keyed = client.get(
        board_path(declared["id"]), headers={"Authorization": f"Bearer {api_keys[Role.ADMIN]}"}
    )
    for other in (unknown, upper, keyed):
        assert other.status_code == 200
        assert_page_headers(other)
        assert other.content == real.content

    page = real.text
    member = declared["member"]
    for secret in (
        declared["id"],
        declared["reference"],
        declared["title"],
        member["name"],
        member["email"],
        *api_keys.values(),
    ):
        assert secret not in page, secret

    # Nothing inline for the CSP to refuse, nothing from anywhere else.
    parsed = markup(page)
    assert parsed.inline == []
    for tag, attrs in parsed.tags:
        assert tag != "style"
        assert "style" not in attrs, tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), "every script is a file"
        for name in ("src", "href", "action"):
            value = attrs.get(name)
            if value:
                assert not urlsplit(value).scheme, value
                assert not value.startswith("//"), value
    assert "http" not in page.lower()
    assert re.search(r"<script[^>]*\bsrc=", page)


def test_the_script_reads_the_delivery_states_from_the_page(client: TestClient) -> None:
    """One spelling of the delivery states: the page carries the server's, the script keeps
    no copy of its own."""
    page = client.get(board_path(str(uuid.uuid4())))
    board = next(attrs for tag, attrs in markup(page.text).tags if attrs.get("id") == "board")
    assert (board.get("data-delivery-states") or "").split(" ") == list(DeliveryStatus)
    script = client.get("/board/static/board.js").text
    # "sent" and "failed" are also names of the coverage funnel's stages; the rest would be a copy.
    for state in set(DeliveryStatus) - {DeliveryStatus.SENT, DeliveryStatus.FAILED}:
        assert f'"{state}"' not in script, state


@pytest.mark.parametrize(
    "incident_id",
    [
        "not-a-uuid",
        "1234",
        "0" * 32,
        "123e4567-e89b-12d3-a456-4266141740000",
        "123e4567-e89b-12d3-a456-42661417400",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-42661417400g",
        "<img src=x onerror=alert(1)>",
    ],
)
def test_anything_but_a_uuid_is_a_404_page(client: TestClient, incident_id: str) -> None:
    response = client.get(board_path(incident_id))
    assert response.status_code == 404, response.text
    assert_page_headers(response)
    assert "Board not found" in response.text
    assert incident_id not in response.text
    assert "<script" not in response.text.lower()


def test_the_script_and_stylesheet_are_served_with_their_types(client: TestClient) -> None:
    page_url = f"http://testserver{board_path(str(uuid.uuid4()))}"
    shell = client.get(page_url)
    urls = asset_urls(page_url, shell.text)
    assert sorted(urlsplit(url).path for url in urls) == [
        "/board/static/board.css",
        "/board/static/board.js",
    ]
    types = {
        "/board/static/board.js": "text/javascript; charset=utf-8",
        "/board/static/board.css": "text/css; charset=utf-8",
    }
    bodies = {}
    for url in urls:
        path = urlsplit(url).path
        response = client.get(url)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == types[path]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-cache"
        etag = response.headers["etag"]
        bodies[path] = response.text
        again = client.get(url, headers={"If-None-Match": etag})
        assert (again.status_code, again.content) == (304, b"")
        assert again.headers["etag"] == etag
        changed = client.get(url, headers={"If-None-Match": '"something-else"'})
        assert changed.status_code == 200
        assert changed.content == response.content

    script = bodies["/board/static/board.js"]
    for forbidden in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "http://",
        "https://",
    ):
        assert forbidden not in script, forbidden
    assert "textContent" in script
    assert "sessionStorage" in script
    assert "history.replaceState" in script
    assert "If-None-Match" in script
    stylesheet = bodies["/board/static/board.css"]
    for forbidden in ("@import", "url(", "http", "@font-face"):
        assert forbidden not in stylesheet, forbidden

    assert client.get("/board/static/other.js").status_code == 404
    assert client.get("/board/static/../templates/board.html").status_code == 404


# ---------------------------------------------------------------------------- a real browser


@dataclass
class Watched:
    """What a page did: every request, every response status per path, every console line."""

    page: Page
    requests: list[str] = field(default_factory=list)
    statuses: list[tuple[str, int]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def watch(browser: Browser) -> Watched:
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    watched = Watched(page)
    page.on("request", lambda request: watched.requests.append(request.url))
    page.on(
        "response",
        lambda response: watched.statuses.append((urlsplit(response.url).path, response.status)),
    )
    page.on("console", lambda message: watched.console.append(message.text))
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    return watched


def field_of(page: Page, name: str) -> Locator:
    return page.locator(f'[data-field="{name}"]')


def assert_clean(watched: Watched, origin: str, secrets: list[str]) -> None:
    """Same origin only, no secret in any URL, no script error, no CSP violation."""
    assert watched.requests
    expected = urlsplit(origin)
    for url in watched.requests:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (expected.scheme, expected.netloc), url
        for secret in secrets:
            assert secret not in url, url
    assert watched.errors == []
    assert not [line for line in watched.console if "Content Security Policy" in line]


@pytest.mark.slow
def test_the_board_follows_the_answers_in_a_real_browser(
    live: Live,
    live_api: Api,
    api_keys: dict[Role, str],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    people = {
        "fr": live_api.member(
            network="editors", country="MA", languages=["fr"], name=f"Yasmina Bennani-{tag}"
        ),
        "ar": live_api.member(
            network="editors", country="TN", languages=["ar"], name=f"Karim Trabelsi-{tag}"
        ),
        "en": live_api.member(
            network="personalities", country="FR", languages=["en"], name=f"Claire Dumont-{tag}"
        ),
        "hook": live_api.member(
            network="personalities",
            country="EG",
            languages=["ar"],
            name=f"Omar Farouk-{tag}",
            webhook_url=PUBLIC_WEBHOOK,
        ),
    }
    incident = live_api.declare(
        list(people.values()),
        mode="exercise",
        followup={
            "reminders": 0,
            "quotas": [
                {"network": "editors", "responses": ["will_engage", "acknowledged"], "min": 2}
            ],
        },
    )
    move(session_factory, incident, people["fr"], DeliveryStatus.SENT)
    move(session_factory, incident, people["ar"], DeliveryStatus.SENT)
    move(session_factory, incident, people["en"], DeliveryStatus.FAILED)
    viewer_key = api_keys[Role.VIEWER]
    secrets = [viewer_key, api_keys[Role.OPERATOR], api_keys[Role.ADMIN]]
    personal = [value for m in people.values() for value in (m["name"], m["email"])]

    first_shot, second_shot = tmp_path / "board-before.png", tmp_path / "board-after.png"
    first_figures, second_figures = tmp_path / "figures-before.png", tmp_path / "figures-after.png"
    with chromium() as browser:
        watched = watch(browser)
        page = watched.page
        # No stream to be had (as behind a proxy that buffers it): the board polls instead.
        page.route("**/events", lambda route: route.abort())
        opened = page.goto(f"{live.url}{board_path(incident['id'])}#key={viewer_key}")
        assert opened is not None
        assert opened.status == 200

        expect(field_of(page, "answered")).to_have_text("0", timeout=WAIT_MS)
        expect(page.locator("#connection")).to_have_text("live")
        expect(page.locator("#connection")).to_have_attribute("data-transport", "poll")
        # The key left the address bar at once, and stays in this tab only.
        assert viewer_key not in page.url
        assert "key=" not in page.url
        assert page.url == f"{live.url}{board_path(incident['id'])}"
        assert page.evaluate("sessionStorage.getItem('rrmm.board.key')") == viewer_key
        assert page.evaluate("localStorage.length") == 0

        expect(field_of(page, "reference")).to_have_text(incident["reference"])
        expect(page.locator("#exercise")).to_be_visible()
        expect(field_of(page, "mode")).to_have_text("EXERCISE")
        expect(field_of(page, "severity")).to_have_text("severe")
        expect(field_of(page, "targeted")).to_have_text("4")
        expect(field_of(page, "ack_rate")).to_have_text("0%")
        expect(field_of(page, "first_answer_seconds")).to_have_text("—")
        expect(field_of(page, "deliveries.sent")).to_have_text("2")
        expect(field_of(page, "deliveries.failed")).to_have_text("1")
        expect(field_of(page, "deliveries.pending")).to_have_text("2")  # the member with both
        expect(field_of(page, "channel.webhook.pending")).to_have_text("1")
        expect(field_of(page, "answers.will_engage")).to_have_text("0")
        expect(field_of(page, "quota.0.answered")).to_have_text("0")
        expect(field_of(page, "quota.0.met")).to_have_text("unmet")
        expect(field_of(page, "reminders")).to_have_text("0")
        expect(field_of(page, "escalations")).to_have_text("0")
        expect(field_of(page, "coverage.network.editors.targeted")).to_have_text("2")
        expect(field_of(page, "coverage.network.editors.sent")).to_have_text("2")
        expect(field_of(page, "coverage.network.personalities.failed")).to_have_text("1")
        expect(field_of(page, "coverage.language.ar.targeted")).to_have_text("2")
        expect(field_of(page, "coverage.channel.email.targeted")).to_have_text("4")
        page.screenshot(path=str(first_shot), full_page=True)
        page.locator("#figures").screenshot(path=str(first_figures))

        # The status has not changed: the board asks with If-None-Match and gets 304s.
        status_path = f"/v1/incidents/{incident['id']}/status"
        page.wait_for_timeout(4500)
        assert (status_path, 304) in watched.statuses
        coverage_reads = sum(1 for path, _ in watched.statuses if path.endswith("/coverage"))
        assert coverage_reads == 3  # network, language, channel, read once: nothing changed

        # Two editors answer, through the JSON route a newsroom system uses.
        for member, response in ((people["fr"], "will_engage"), (people["ar"], "acknowledged")):
            token = sign(live.settings, delivery_of(session_factory, incident, member).id)
            posted = live_api.client.post("/v1/acks", json={"token": token, "response": response})
            assert posted.status_code == 200, posted.text

        expect(field_of(page, "answered")).to_have_text("2", timeout=WAIT_MS)
        expect(field_of(page, "ack_rate")).to_have_text("50%", timeout=WAIT_MS)
        expect(field_of(page, "answers.will_engage")).to_have_text("1")
        expect(field_of(page, "answers.acknowledged")).to_have_text("1")
        expect(field_of(page, "answers.unavailable")).to_have_text("0")
        expect(field_of(page, "quota.0.answered")).to_have_text("2")
        expect(field_of(page, "quota.0.met")).to_have_text("met")
        expect(field_of(page, "coverage.network.editors.answered")).to_have_text("2")
        expect(field_of(page, "coverage.network.personalities.answered")).to_have_text("0")
        expect(field_of(page, "coverage.channel.email.answered")).to_have_text("2")
        expect(field_of(page, "first_answer_seconds")).not_to_have_text("—")
        expect(field_of(page, "median_answer_seconds")).not_to_have_text("—")
        assert field_of(page, "ack_rate").get_attribute("data-value") == "0.5"
        page.screenshot(path=str(second_shot), full_page=True)
        page.locator("#figures").screenshot(path=str(second_figures))

        # On a phone: one column, nothing wider than the screen (a wide table scrolls in its box).
        page.set_viewport_size({"width": 360, "height": 740})
        page.screenshot(path=str(tmp_path / "board-phone.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        page.set_viewport_size({"width": 1100, "height": 1400})

        # The server goes away: the board says so, keeps the last figures, and comes back.
        page.route(f"**{status_path}", lambda route: route.abort())
        expect(page.locator("#connection")).to_have_text("stale (retrying)", timeout=WAIT_MS)
        expect(field_of(page, "answered")).to_have_text("2")
        page.unroute(f"**{status_path}")
        expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)

        text = page.inner_text("body")
        document = page.content()
        assert_clean(watched, live.url, secrets)

    for value in personal:
        assert value not in text, value
        assert value not in document, value
    for shot in (first_shot, second_shot, first_figures, second_figures):
        assert shot.read_bytes().startswith(PNG_SIGNATURE)
    assert first_shot.read_bytes() != second_shot.read_bytes()
    assert first_figures.read_bytes() != second_figures.read_bytes()


@pytest.mark.slow
def test_the_board_follows_the_event_stream_with_the_key_in_a_header(
    live: Live,
    live_api: Api,
    api_keys: dict[Role, str],
    session_factory: sessionmaker[Session],
) -> None:
    """Where the stream can be had, the board reads it with fetch() (the key in the
    Authorization header, never in a URL) and draws each status event: no polling."""
    tag = uuid.uuid4().hex[:6]
    people = [
        live_api.member(
            network="editors", country="MA", languages=["fr"], name=f"Nadia Alaoui-{tag}"
        ),
        live_api.member(
            network="editors", country="SN", languages=["fr"], name=f"Moussa Diop-{tag}"
        ),
    ]
    incident = live_api.declare(people)
    for member in people:
        move(session_factory, incident, member, DeliveryStatus.SENT)
    viewer_key = api_keys[Role.VIEWER]
    events_path = f"/v1/incidents/{incident['id']}/events"
    with chromium() as browser:
        watched = watch(browser)
        page = watched.page
        streams: list[Any] = []
        page.on(
            "request",
            lambda request: (
                streams.append(request) if urlsplit(request.url).path == events_path else None
            ),
        )
        page.goto(f"{live.url}{board_path(incident['id'])}#key={viewer_key}")
        expect(field_of(page, "answered")).to_have_text("0", timeout=WAIT_MS)
        expect(field_of(page, "deliveries.sent")).to_have_text("2")
        expect(page.locator("#connection")).to_have_text("live")
        expect(page.locator("#connection")).to_have_attribute("data-transport", "stream")

        for member, response in ((people[0], "will_engage"), (people[1], "acknowledged")):
            token = sign(live.settings, delivery_of(session_factory, incident, member).id)
            posted = live_api.client.post("/v1/acks", json={"token": token, "response": response})
            assert posted.status_code == 200, posted.text
        expect(field_of(page, "answered")).to_have_text("2", timeout=WAIT_MS)
        expect(field_of(page, "ack_rate")).to_have_text("100%", timeout=WAIT_MS)
        expect(field_of(page, "answers.will_engage")).to_have_text("1")
        expect(page.locator("#connection")).to_have_attribute("data-transport", "stream")

        assert len(streams) == 1, [request.url for request in streams]
        assert streams[0].all_headers()["authorization"] == f"Bearer {viewer_key}"
        assert (events_path, 200) in watched.statuses
        status_path = f"/v1/incidents/{incident['id']}/status"
        assert not [path for path, _ in watched.statuses if path == status_path]
        assert_clean(watched, live.url, [viewer_key])


@pytest.mark.slow
def test_a_wrong_key_missing_key_or_unknown_incident_says_so(
    live: Live, live_api: Api, api_keys: dict[Role, str]
) -> None:
    member = live_api.member(name="Hassan Amrani-Keyform")
    incident = live_api.declare([member])
    viewer_key = api_keys[Role.VIEWER]
    wrong_key = "rrmm_" + "x" * 43
    board = f"{live.url}{board_path(incident['id'])}"
    with chromium() as browser:
        # A key that is not one: a clear message and the form, and the key is not kept.
        wrong = watch(browser)
        wrong.page.goto(f"{board}#key={wrong_key}")
        expect(wrong.page.locator("#key-message")).to_contain_text("not accepted", timeout=WAIT_MS)
        expect(wrong.page.locator("#key-form")).to_be_visible()
        expect(wrong.page.locator("#board")).to_be_hidden()
        expect(wrong.page.locator("#connection")).to_have_text("waiting for a key")
        assert wrong.page.url == board
        assert wrong.page.evaluate("sessionStorage.getItem('rrmm.board.key')") is None
        assert (f"/v1/incidents/{incident['id']}/events", 401) in wrong.statuses

        # Pasting the right key opens the board; "use another key" goes back to the form.
        wrong.page.locator("#key-input").fill(viewer_key)
        wrong.page.locator("#key-form button[type=submit]").click()
        expect(field_of(wrong.page, "answered")).to_have_text("0", timeout=WAIT_MS)
        expect(field_of(wrong.page, "targeted")).to_have_text("1")
        expect(wrong.page.locator("#key-form")).to_be_hidden()
        assert wrong.page.url == board
        wrong.page.locator("#forget").click()
        expect(wrong.page.locator("#key-form")).to_be_visible()
        expect(wrong.page.locator("#board")).to_be_hidden()
        assert wrong.page.evaluate("sessionStorage.getItem('rrmm.board.key')") is None
        assert_clean(wrong, live.url, [viewer_key, wrong_key])

        # No key at all: the form, and no request to the API.
        bare = watch(browser)
        bare.page.goto(board)
        expect(bare.page.locator("#key-message")).to_contain_text("Paste the viewer key")
        expect(bare.page.locator("#key-form")).to_be_visible()
        bare.page.wait_for_timeout(500)
        assert not [url for url in bare.requests if "/v1/" in url]

        # A valid key and an id that is not an incident: said plainly, polling stops.
        missing = watch(browser)
        missing.page.goto(f"{live.url}{board_path(str(uuid.uuid4()))}#key={viewer_key}")
        expect(missing.page.locator("#problem")).to_contain_text(
            "no incident with this id", timeout=WAIT_MS
        )
        expect(missing.page.locator("#connection")).to_have_text("stopped")
        expect(missing.page.locator("#board")).to_be_hidden()
        assert_clean(missing, live.url, [viewer_key])
