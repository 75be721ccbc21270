"""The operator console: pages for people (not keys), server-rendered, working without
JavaScript.

Sign-in is a password and a TOTP code (or a recovery code) into a server-side session: an
opaque random id in a cookie (`__Host-` prefixed, Secure, HttpOnly, SameSite=Lax outside
the embedded mode), ended after RRMM_CONSOLE_IDLE_MINUTES without a request or
RRMM_CONSOLE_SESSION_HOURS after sign-in. Every form carries a CSRF token: the session's
own once signed in, a double-submit cookie before. The pages load nothing from anywhere
else and run no inline script or style (a strict CSP says so to the browser).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from limits import parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session, sessionmaker

from app.acks.ratelimit import RATE_LIMIT_STORAGE_ERRORS
from app.clientaddr import client_address
from app.config import Settings
from app.console import words
from app.db import session_scope
from app.deliveries.content import scale_word
from app.errors import InvalidInput
from app.incidents import service as incidents
from app.incidents.schemas import IncidentFilters
from app.models import ConsoleSession, Person
from app.people import service as people
from app.security import page_headers
from app.state import app_state

pages = APIRouter(include_in_schema=False)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = page_headers(CONTENT_SECURITY_POLICY)
_ENV = Environment(loader=PackageLoader("app.console", "templates"), autoescape=True)
Field = Annotated[str, Form(max_length=400)]


@dataclass(frozen=True)
class Cookies:
    """The cookie names and flags for this deployment: `__Host-` names need Secure, which
    a browser refuses over plain http, so the embedded mode uses plain names."""

    session: str
    csrf: str
    secure: bool

    @classmethod
    def of(cls, settings: Settings) -> Cookies:
        if settings.mode == "embedded":
            return cls("rrmm_session", "rrmm_csrf", secure=False)
        return cls("__Host-rrmm_session", "__Host-rrmm_csrf", secure=True)


def _settings(request: Request) -> Settings:
    return app_state(request.app).settings


def _sessions(request: Request) -> sessionmaker[Session]:
    return app_state(request.app).session_factory


def _policy(settings: Settings) -> people.SessionPolicy:
    return people.SessionPolicy(
        idle=timedelta(minutes=settings.console_idle_minutes),
        absolute=timedelta(hours=settings.console_session_hours),
    )


def _box(settings: Settings) -> Any:
    return people.totp_box(settings.secret, settings.previous_secret)


class _FailedSignIns:
    """Failed sign-ins per client address (any account), in RRMM_RATE_LIMIT_STORAGE. If
    the storage cannot be reached the address is not limited (counted in
    rrmm_rate_limit_storage_errors_total): the per-account lockout, in the database, holds."""

    def __init__(self, request: Request, settings: Settings, address: str) -> None:
        # One limiter per app (its counts are the app's, like the ack limiter's).
        state = app_state(request.app)
        if state.console_sign_in_limiter is None:
            state.console_sign_in_limiter = MovingWindowRateLimiter(
                storage_from_string(settings.rate_limit_storage)
            )
        self.limiter: MovingWindowRateLimiter = state.console_sign_in_limiter
        self.rate = parse(settings.console_sign_in_rate_limit)
        self.key = ("console-sign-in", address)

    def allowed(self) -> bool:
        try:
            return bool(self.limiter.test(self.rate, *self.key))
        except StorageError:
            RATE_LIMIT_STORAGE_ERRORS.inc()
            return True

    def count(self) -> None:
        try:
            self.limiter.hit(self.rate, *self.key)
        except StorageError:
            RATE_LIMIT_STORAGE_ERRORS.inc()


def _page(template: str, language: str, status: int = 200, **values: Any) -> HTMLResponse:
    body = _ENV.get_template(template).render(**words.context(language), **values)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _visitor_language(request: Request) -> str:
    return words.language_of(request.headers.get("accept-language"))


def _anonymous_page(
    request: Request, template: str, language: str, status: int = 200, **values: Any
) -> Any:
    """A page shown before sign-in, its forms protected by a double-submit token: the same
    random value in a cookie and in the form."""
    cookies = Cookies.of(_settings(request))
    token = request.cookies.get(cookies.csrf) or secrets.token_urlsafe(32)
    response = _page(template, language, status, csrf=token, **values)
    response.set_cookie(
        cookies.csrf, token, httponly=True, secure=cookies.secure, samesite="strict", path="/"
    )
    return response


def _message(language: str, status: int, title: str, text: str) -> HTMLResponse:
    said = words.WORDS[words.context(language)["language"]]
    return _page("message.html.j2", language, status, title=said[title], message=said[text])


def _csrf_refused(language: str) -> HTMLResponse:
    return _message(language, 403, "form_expired", "form_expired_text")


_STATIC = {"console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}


@pages.get("/console/static/{name}")
def console_static(name: str) -> Response:
    """The console's stylesheet and icon (nothing else is served from here)."""
    media_type = _STATIC.get(name)
    if media_type is None:
        return Response(status_code=404)
    body = files("app.console").joinpath("static", name).read_bytes()
    return Response(
        body,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# ----------------------------------------------------------------------------- set-up


@pages.get("/console/setup/{token}", response_class=HTMLResponse)
def setup_page(token: str, request: Request) -> Any:
    """The one-time set-up link from `rrmm people create`: choose a password and enrol
    an authenticator app (a QR code drawn here, as SVG)."""
    settings = _settings(request)
    with session_scope(_sessions(request)) as session:
        person = people.person_for_setup(session, token)
        if person is None:
            return _setup_link_invalid(_visitor_language(request))
        return _setup_form(request, session, person, settings)


def _setup_link_invalid(language: str) -> HTMLResponse:
    return _message(language, 404, "link_invalid", "link_invalid_text")


def _setup_form(
    request: Request,
    session: Session,
    person: Person,
    settings: Settings,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
) -> Any:
    secret = people.setup_totp_secret(session, person, _box(settings))
    uri = people.provisioning_uri(person, secret)
    qr = segno.make(uri, error="m").svg_inline(scale=4, title="Authenticator QR code")
    return _anonymous_page(
        request,
        "setup.html.j2",
        person.language,
        status,
        person=person,
        qr=qr,
        secret=secret,
        required=settings.mode != "embedded",
        errors=errors or {},
        minimum=people.MIN_PASSWORD_LENGTH,
    )


@pages.post("/console/setup/{token}", response_class=HTMLResponse)
def setup_form(
    token: str,
    request: Request,
    password: Field = "",
    confirmation: Field = "",
    code: Annotated[str, Form(max_length=20)] = "",
    csrf: Field = "",
) -> Any:
    """Set the password and the second factor; the recovery codes are shown once."""
    settings = _settings(request)
    if not people.csrf_ok(request.cookies.get(Cookies.of(settings).csrf, ""), csrf):
        return _csrf_refused(_visitor_language(request))
    with session_scope(_sessions(request)) as session:
        person = people.person_for_setup(session, token)
        if person is None:
            return _setup_link_invalid(_visitor_language(request))
        try:
            codes = people.complete_setup(
                session,
                person,
                password=password,
                confirmation=confirmation,
                code=code,
                box=_box(settings),
                second_factor_required=settings.mode != "embedded",
            )
        except InvalidInput as exc:
            session.rollback()
            person = people.person_for_setup(session, token)
            assert person is not None
            errors = {p.field: p.reason for p in exc.errors or []}
            return _setup_form(request, session, person, settings, status=422, errors=errors)
        return _page("recovery.html.j2", person.language, person=person, codes=codes)


# ---------------------------------------------------------------------------- sign-in


@pages.get("/console/login", response_class=HTMLResponse)
def login_page(request: Request) -> Any:
    """Sign in: email, password and the code of the authenticator app."""
    return _anonymous_page(
        request, "login.html.j2", _visitor_language(request), email="", error=None
    )


@pages.post("/console/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    email: Field = "",
    password: Field = "",
    code: Annotated[str, Form(max_length=20)] = "",
    csrf: Field = "",
) -> Any:
    """Check the credentials; on success a new session (a new id: no fixation) and the
    incidents page. Failures wait per account (backoff) and per client address."""
    settings = _settings(request)
    cookies = Cookies.of(settings)
    language = _visitor_language(request)
    said = words.WORDS[words.context(language)["language"]]
    if not people.csrf_ok(request.cookies.get(cookies.csrf, ""), csrf):
        return _csrf_refused(language)
    address = client_address(request.scope)
    failures = _FailedSignIns(request, settings, address)
    if not failures.allowed():
        return _anonymous_page(
            request, "login.html.j2", language, 429, email=email, error=said["too_many"]
        )
    with session_scope(_sessions(request)) as session:
        try:
            person = people.sign_in(
                session, email=email, password=password, code=code, box=_box(settings)
            )
        except people.SignInRefused as exc:
            session.commit()  # the failure counts, even though the request fails
            failures.count()
            message = said["locked" if exc.locked_until is not None else "refused"]
            return _anonymous_page(
                request, "login.html.j2", language, 401, email=email, error=message
            )
        cookie, _ = people.open_session(
            session, person, policy=_policy(settings), address=address[:64]
        )
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        cookies.session,
        cookie,
        httponly=True,
        secure=cookies.secure,
        samesite="lax",
        path="/",
        max_age=settings.console_session_hours * 3600,
    )
    response.delete_cookie(cookies.csrf, path="/", secure=cookies.secure, httponly=True)
    return response


@dataclass(frozen=True)
class SignedIn:
    row: ConsoleSession
    person: Person
    cookie: str


def _signed_in(request: Request, session: Session) -> SignedIn | None:
    settings = _settings(request)
    cookie = request.cookies.get(Cookies.of(settings).session)
    found = people.session_for(session, cookie, policy=_policy(settings))
    if found is None or cookie is None:
        return None
    return SignedIn(found[0], found[1], cookie)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303)


@pages.post("/console/sign-out", response_class=HTMLResponse)
def sign_out(request: Request, csrf: Field = "", everywhere: Field = "") -> Any:
    """End this session (or, with `everywhere`, every session of the person)."""
    cookies = Cookies.of(_settings(request))
    with session_scope(_sessions(request)) as session:
        current = _signed_in(request, session)
        if current is None:
            return _to_login()
        if not people.csrf_ok(current.row.csrf_token, csrf):
            return _csrf_refused(current.person.language)
        if everywhere:
            people.close_all_sessions(session, current.person.id)
        else:
            people.close_session(session, current.cookie)
    response = _to_login()
    response.delete_cookie(cookies.session, path="/", secure=cookies.secure, httponly=True)
    return response


# ---------------------------------------------------------------------------- the pages


@pages.get("/console", response_class=HTMLResponse)
def incidents_page(request: Request) -> Any:
    """The incidents, newest first, with their state (every role)."""
    with session_scope(_sessions(request)) as session:
        current = _signed_in(request, session)
        if current is None:
            return _to_login()
        rows = incidents.list_incidents(session, IncidentFilters(), limit=100, after=None)
        language = current.person.language
        return _page(
            "incidents.html.j2",
            language,
            current=current.person,
            severity=lambda value: scale_word(language, value),
            csrf=current.row.csrf_token,
            incidents=rows[:100],
        )
