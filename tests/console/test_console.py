"""The console's people and sessions: invited by a set-up link, signed in with a password and
a TOTP code (or a recovery code, once), locked out with backoff, kept in server-side
sessions that end when idle, at their absolute end, at sign-out and when the person is
disabled; every form behind a CSRF token. Over HTTP with the TestClient, and once in a real
browser."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.models import AuditEntry, ConsoleSession, Person, Role
from app.models.base import utcnow
from app.people import service as people
from app.principal import Principal
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.factories import declare_body, member_payload
from tests.support.live_server import serve

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "__Host-rrmm_session"


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "input" and found.get("name"):
            self.values[str(found["name"])] = found.get("value") or ""


def parsed(html: str) -> _Inputs:
    parser = _Inputs()
    parser.feed(html)
    return parser


def invite(
    session_factory: sessionmaker[Session],
    role: Role = Role.OPERATOR,
    email: str = "amina.idrissi@x.org",
) -> people.SetupLink:
    with session_scope(session_factory) as session:
        return people.create_person(
            session, email=email, name="Amina Idrissi", role=role, actor=Principal.cli()
        )


def totp_now(page: str) -> str:
    secret = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', page)
    assert secret, "the set-up page shows the key"
    return pyotp.TOTP(secret.group(1)).now()


@pytest.fixture
def console(app: FastAPI) -> Iterator[TestClient]:
    """Over https, as production serves it: the session cookie is `__Host-` and Secure."""
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        yield client


def set_up(console: TestClient, token: str, **fields: str) -> Any:
    page = console.get(f"/console/setup/{token}")
    assert page.status_code == 200, page.text
    form = {
        "csrf": parsed(page.text).values["csrf"],
        "password": PASSWORD,
        "confirmation": PASSWORD,
        "code": totp_now(page.text),
        **fields,
    }
    return console.post(f"/console/setup/{token}", data=form)


def sign_in(console: TestClient, secret: str | None, **fields: str) -> Any:
    page = console.get("/console/login")
    form = {
        "csrf": parsed(page.text).values["csrf"],
        "email": "Amina.Idrissi@X.org",  # the email is matched whatever its case
        "password": PASSWORD,
        "code": pyotp.TOTP(secret).now() if secret else "",
        **fields,
    }
    return console.post("/console/login", data=form)


def totp_secret_of(session_factory: sessionmaker[Session], settings: Settings) -> str:
    with session_factory() as session:
        person = session.scalars(select(Person)).one()
        assert person.totp_secret is not None
        assert b"JBSW" not in person.totp_secret  # stored encrypted, not in base32
        return people.totp_box(settings.secret).decrypt(person.totp_secret)


def test_set_up_then_sign_in_then_sign_out(
    console: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    link = invite(session_factory)
    page = console.get(f"/console/setup/{link.token}")
    assert page.status_code == 200
    assert "<svg" in page.text  # the QR code drawn here, nothing fetched from elsewhere
    for tag, attrs in parsed(page.text).tags:
        assert tag not in ("script", "style"), tag
        assert "style" not in attrs, tag
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]

    done = set_up(console, link.token)
    assert done.status_code == 200, done.text
    codes = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", done.text)
    assert len(codes) == people.RECOVERY_CODES
    assert console.get(f"/console/setup/{link.token}").status_code == 404  # used once

    with session_factory() as session:
        person = session.scalars(select(Person)).one()
        assert person.status == "active"
        assert person.password_hash is not None
        assert person.password_hash.startswith("$argon2id$")
        assert PASSWORD not in person.password_hash
        assert all(code not in person.recovery_code_hashes for code in codes)
    secret = totp_secret_of(session_factory, settings)

    assert console.get("/console").headers["location"] == "/console/login"
    signed_in = sign_in(console, secret)
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.headers["location"] == "/console"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for flag in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    with session_factory() as session:
        row = session.scalars(select(ConsoleSession)).one()
        assert row.id_hash != console.cookies[SESSION_COOKIE]  # stored as a digest only

    incidents = console.get("/console")
    assert incidents.status_code == 200, incidents.text
    assert "Amina Idrissi · operator" in incidents.text
    assert 'id="no-incidents"' in incidents.text

    csrf = parsed(incidents.text).values["csrf"]
    assert console.post("/console/sign-out", data={"csrf": "forged"}).status_code == 403
    out = console.post("/console/sign-out", data={"csrf": csrf})
    assert out.status_code == 303
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0
        actions = set(session.scalars(select(AuditEntry.action)))
    assert {"person.create", "person.setup", "person.sign_in"} <= actions


def test_a_new_session_id_at_every_sign_in_and_sign_out_everywhere(
    app: FastAPI, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    link = invite(session_factory)
    # Two browsers on one app: the second client shares the first one's lifespan.
    with (
        TestClient(app, base_url="https://testserver", follow_redirects=False) as first,
        closing(TestClient(app, base_url="https://testserver", follow_redirects=False)) as second,
    ):
        assert set_up(first, link.token).status_code == 200
        secret = totp_secret_of(session_factory, settings)
        # Sign-in never adopts a session id it did not just make (no fixation): the id it
        # issues is new and random, and an id planted beforehand opens nothing.
        first.cookies.set(SESSION_COOKIE, "planted-by-an-attacker")
        first_code = pyotp.TOTP(secret).now()
        signed_in = sign_in(first, secret, code=first_code)
        assert signed_in.status_code == 303
        issued = signed_in.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        assert issued != "planted-by-an-attacker"
        with session_factory() as session:
            assert session.get(ConsoleSession, people.digest(issued)) is not None
            assert session.get(ConsoleSession, people.digest("planted-by-an-attacker")) is None
        first.cookies.clear()
        first.cookies.set(SESSION_COOKIE, issued)
        # The same code again, within its 30 s, is refused (a code signs in once); the next
        # step's code opens a second, different session.
        assert sign_in(second, secret, code=first_code).status_code == 401
        next_code = pyotp.TOTP(secret).at(time.time() + 30)
        assert sign_in(second, secret, code=next_code).status_code == 303
        assert first.cookies[SESSION_COOKIE] != second.cookies[SESSION_COOKIE]

        csrf = parsed(first.get("/console").text).values["csrf"]
        everywhere = first.post("/console/sign-out", data={"csrf": csrf, "everywhere": "1"})
        assert everywhere.status_code == 303
        assert second.get("/console").headers["location"] == "/console/login"


def test_wrong_credentials_say_the_same_and_lock_the_account_with_backoff(
    console: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    link = invite(session_factory)
    assert set_up(console, link.token).status_code == 200
    secret = totp_secret_of(session_factory, settings)

    wrong_password = sign_in(console, secret, password="not the password at all")
    wrong_code = sign_in(console, secret, code="000000")
    unknown = sign_in(console, secret, email="nobody@x.org")
    for refused in (wrong_password, wrong_code, unknown):
        assert refused.status_code == 401
        assert "Email, password or code not recognised." in refused.text
        assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    assert (
        'value="Amina.Idrissi@X.org"' in wrong_password.text
    )  # the email kept, never the password
    assert PASSWORD not in wrong_code.text

    for _ in range(people.LOCK_AFTER_FAILURES - 2):
        sign_in(console, secret, password="still wrong, still wrong")
    locked = sign_in(console, secret)  # the right password and code: still refused
    assert locked.status_code == 401
    assert "Too many failed attempts" in locked.text
    with session_factory() as session:
        person = session.scalars(select(Person)).one()
        assert person.failed_sign_ins == people.LOCK_AFTER_FAILURES
        assert person.locked_until is not None
        waited = person.locked_until - utcnow()
        assert timedelta(seconds=30) < waited <= timedelta(minutes=1)


def test_failed_sign_ins_are_limited_per_address_whatever_the_account(
    settings: Settings, engine: Any, session_factory: sessionmaker[Session]
) -> None:
    del engine
    limited = settings.model_copy(update={"console_sign_in_rate_limit": "3/minute"})
    link = invite(session_factory)
    with TestClient(
        create_app(limited), base_url="https://testserver", follow_redirects=False
    ) as console:
        assert set_up(console, link.token).status_code == 200
        secret = totp_secret_of(session_factory, settings)
        for email in ("a@x.org", "b@x.org", "c@x.org"):  # three accounts, none locked
            assert sign_in(console, secret, email=email).status_code == 401
        refused = sign_in(console, secret)  # right credentials, from the same address
        assert refused.status_code == 429
        assert "Too many attempts" in refused.text
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0


def test_the_lockout_grows_to_an_hour_and_stays_there(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    """Each failure after a lock ends doubles the wait, up to an hour, however many."""
    link = invite(session_factory)
    box = people.totp_box(settings.secret)
    with session_scope(session_factory) as session:
        person = session.get(Person, link.person.id)
        assert person is not None
        people.complete_setup(
            session,
            person,
            password=PASSWORD,
            confirmation=PASSWORD,
            code="",
            box=box,
            second_factor_required=False,
        )
    now = utcnow()
    waits = []
    for _ in range(60):
        with session_scope(session_factory) as session, pytest.raises(people.SignInRefused):
            people.sign_in(
                session,
                email=link.person.email,
                password="wrong wrong wrong",
                code="",
                box=box,
                now=now,
            )
        with session_factory() as session:
            locked = session.get(Person, link.person.id)
            assert locked is not None
            if locked.locked_until is not None:
                waits.append(locked.locked_until - now)
                now = locked.locked_until  # tried again the moment the lock ends
    assert waits[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert waits[-1] == people.MAX_LOCK
    assert max(waits) == people.MAX_LOCK


def test_a_recovery_code_signs_in_once(
    console: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    link = invite(session_factory)
    codes = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", set_up(console, link.token).text)
    secret = totp_secret_of(session_factory, settings)
    assert sign_in(console, secret, code=codes[3]).status_code == 303
    assert sign_in(console, secret, code=codes[3]).status_code == 401
    assert sign_in(console, secret, code=codes[4].upper()).status_code == 303


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"password": "short", "confirmation": "short"}, "password", "at least 12"),
        (
            {"password": "amina.idrissi@x.org", "confirmation": "amina.idrissi@x.org"},
            "password",
            "email",
        ),
        ({"confirmation": "something else entirely"}, "confirmation", "does not match"),
        ({"code": "123456"}, "code", "not the code"),
        ({"code": ""}, "code", "required"),  # production mode: the second factor is required
    ],
)
def test_a_bad_set_up_says_why_next_to_the_field_and_changes_nothing(
    console: TestClient,
    session_factory: sessionmaker[Session],
    fields: dict[str, str],
    field: str,
    reason: str,
) -> None:
    link = invite(session_factory)
    refused = set_up(console, link.token, **fields)
    assert refused.status_code == 422, refused.text
    error = re.search(
        rf'<p id="{field}-error" class="error" role="alert">([^<]*)</p>', refused.text
    )
    assert error, refused.text
    assert reason in error.group(1)
    assert f'aria-describedby="{field}-error"' in refused.text
    with session_factory() as session:
        person = session.scalars(select(Person)).one()
        assert person.status == "invited"
        assert person.password_hash is None
    assert console.get(f"/console/setup/{link.token}").status_code == 200  # still usable


def test_forms_without_their_token_are_refused(
    console: TestClient, session_factory: sessionmaker[Session]
) -> None:
    link = invite(session_factory)
    console.get("/console/login")
    no_token = console.post(
        "/console/login", data={"email": "amina.idrissi@x.org", "password": PASSWORD, "code": ""}
    )
    assert no_token.status_code == 403
    forged = console.post(f"/console/setup/{link.token}", data={"csrf": "x", "password": "y"})
    assert forged.status_code == 403
    with session_factory() as session:
        assert session.scalars(select(Person)).one().failed_sign_ins == 0


def test_sessions_end_when_idle_at_their_absolute_end_and_when_disabled(
    session_factory: sessionmaker[Session],
) -> None:
    link = invite(session_factory)
    policy = people.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=12))
    start = utcnow()
    with session_scope(session_factory) as session:
        person = session.get(Person, link.person.id)
        assert person is not None
        person.status = "active"
        idle, _ = people.open_session(session, person, policy=policy, address=None, now=start)
        busy, _ = people.open_session(session, person, policy=policy, address=None, now=start)
    with session_scope(session_factory) as session:
        # Kept alive by a request every 20 minutes; the other one sits idle.
        for minutes in (20, 40, 60):
            later = start + timedelta(minutes=minutes)
            assert people.session_for(session, busy, policy=policy, now=later) is not None
        assert people.session_for(session, idle, policy=policy, now=later) is None
        end = start + timedelta(hours=12)
        assert people.session_for(session, busy, policy=policy, now=end) is None
    with session_scope(session_factory) as session:
        fresh, _ = people.open_session(session, person, policy=policy, address=None)
        people.disable_person(session, "amina.idrissi@x.org", actor=Principal.cli())
    with session_scope(session_factory) as session:
        assert people.session_for(session, fresh, policy=policy) is None
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0


def test_a_set_up_link_expires_after_a_day(session_factory: sessionmaker[Session]) -> None:
    link = invite(session_factory)
    with session_factory() as session:
        assert people.person_for_setup(session, link.token) is not None
        later = link.expires_at + timedelta(seconds=1)
        assert people.person_for_setup(session, link.token, now=later) is None
        assert people.person_for_setup(session, "not-a-token") is None


def test_the_incidents_page_lists_the_incidents(
    console: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    member = console.post("/v1/members", json=member_payload(), headers=operator).json()
    body = declare_body(audience={"member_ids": [member["id"]]}, title="Tension <b>in</b> Fès")
    incident = console.post("/v1/incidents", json=body, headers=operator).json()
    link = invite(session_factory, Role.VIEWER)
    set_up(console, link.token)
    assert sign_in(console, totp_secret_of(session_factory, settings)).status_code == 303
    page = console.get("/console")
    assert incident["reference"] in page.text
    assert "Tension &lt;b&gt;in&lt;/b&gt; Fès" in page.text  # escaped
    assert member["email"] not in page.text  # nothing of the members
    assert "Amina Idrissi · viewer" in page.text


def test_the_console_speaks_the_persons_language(
    console: TestClient,
    operator: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    member = console.post("/v1/members", json=member_payload(), headers=operator).json()
    declared = console.post(
        "/v1/incidents",
        json=declare_body(audience={"member_ids": [member["id"]]}),
        headers=operator,
    )
    assert declared.status_code == 202, declared.text
    with session_scope(session_factory) as session:
        link = people.create_person(
            session,
            email="karim.haddad@x.org",
            name="Karim Haddad",
            role=Role.OPERATOR,
            language="ar",
            actor=Principal.cli(),
        )
    page = console.get(f"/console/setup/{link.token}")
    assert '<html lang="ar" dir="rtl">' in page.text
    assert "مرحباً، Karim Haddad" in page.text
    short = set_up(console, link.token, password="short", confirmation="short")
    assert "12 حرفاً على الأقل" in short.text  # the reason next to the field, in Arabic
    assert set_up(console, link.token).status_code == 200
    with session_factory() as session:
        person = session.scalars(select(Person)).one()
        assert person.totp_secret is not None
        secret = people.totp_box(settings.secret).decrypt(person.totp_secret)
    signed_in = sign_in(console, secret, email="karim.haddad@x.org")
    assert signed_in.status_code == 303, signed_in.text
    incidents = console.get("/console").text
    assert '<html lang="ar" dir="rtl">' in incidents
    assert "<h1>الحوادث</h1>" in incidents
    assert "Karim Haddad · مشغّل" in incidents
    assert "<td>شديدة</td>" in incidents  # the severity, in Arabic
    assert "<td>حقيقي</td>" in incidents

    # Before sign-in, the browser's languages decide.
    french = console.get("/console/login", headers={"Accept-Language": "de-DE, fr;q=0.8, en;q=0.5"})
    assert '<html lang="fr" dir="ltr">' in french.text
    assert "<h1>Se connecter</h1>" in french.text
    other = console.get("/console/login", headers={"Accept-Language": "de, es;q=0.9"})
    assert '<html lang="en" dir="ltr">' in other.text


@pytest.mark.slow
def test_a_new_operator_sets_up_and_signs_in_in_a_real_browser(
    settings: Settings, engine: Any, session_factory: sessionmaker[Session]
) -> None:
    """The embedded mode, as `make run` serves it over plain http: plain cookie names, and
    the second factor offered (enrolled here) though not required."""
    del engine
    embedded = settings.model_copy(update={"mode": "embedded"})
    link = invite(session_factory)
    with (
        serve(lambda _url: create_app(embedded)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text))
        page.goto(f"{url}/console/setup/{link.token}")
        expect(page.locator("svg")).to_be_visible()
        secret = page.locator("#totp-secret").inner_text()
        page.fill("#password", PASSWORD)
        page.fill("#confirmation", PASSWORD)
        page.fill("#code", pyotp.TOTP(secret).now())
        page.click("button[type=submit]")
        expect(page.locator("#recovery-codes li")).to_have_count(people.RECOVERY_CODES)
        page.click("text=Sign in")
        page.fill("#email", "amina.idrissi@x.org")
        page.fill("#password", PASSWORD)
        page.fill("#code", pyotp.TOTP(secret).now())
        page.click("form.stack button[type=submit]")
        expect(page.locator("#signed-in-as")).to_have_text("Amina Idrissi · operator")
        expect(page.locator("#no-incidents")).to_be_visible()
        page.click("text=Sign out everywhere")
        expect(page.locator("h1")).to_have_text("Sign in")
        browser.close()
    assert problems == []  # no CSP violation, no error
