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
import uuid
from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from limits import parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from app.acks.ratelimit import RATE_LIMIT_STORAGE_ERRORS
from app.broker import api_dispatcher
from app.clientaddr import client_address
from app.config import Settings
from app.console import words
from app.db import session_scope
from app.deliveries.content import scale_word, text_direction
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.incidents import audience
from app.incidents import service as incidents
from app.incidents.schemas import Audience, IncidentFilters
from app.models import Briefing, ConsoleSession, Incident, Person, Role
from app.people import service as people
from app.security import page_headers
from app.state import app_state
from app.vocabulary import IncidentStatus

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


# -------------------------------------------------------------------------- approvals


def _may_decide(person: Person) -> bool:
    return Role(person.role).includes(Role.OPERATOR)


def _audience_size(session: Session, incident: Incident) -> int:
    """Members the pending declaration would brief if approved now (one COUNT)."""
    condition = and_(
        audience.audience_condition(session, Audience(**incident.audience), check=False),
        audience.reachable(incident.channels),
    )
    return audience.count_reach(session, condition, incident.channels).members


def _approvals(
    session: Session,
    current: SignedIn,
    *,
    status: int = 200,
    note: str | None = None,
    error: str | None = None,
    reason_error: str | None = None,
) -> HTMLResponse:
    """What waits for a second person, each with its briefing as written, in every
    language; the declarer sees theirs as waiting, with no approve button."""
    language = current.person.language
    pending = list(
        session.scalars(
            select(Incident)
            .where(Incident.status == IncidentStatus.PENDING_APPROVAL)
            .order_by(Incident.declared_at)
        )
    )
    first_versions = {
        b.incident_id: b
        for b in session.scalars(
            select(Briefing).where(
                Briefing.incident_id.in_([i.id for i in pending]), Briefing.version == 1
            )
        )
    }
    items = []
    for incident in pending:
        briefing = first_versions.get(incident.id)
        content = (
            [(lang, briefing.content[lang]) for lang in briefing.languages] if briefing else []
        )
        items.append(
            {
                "incident": incident,
                "audience": _audience_size(session, incident),
                "content": content,
                "directions": {lang: text_direction(lang) for lang, _ in content},
                "mine": incident.created_by_person_id == current.person.id,
            }
        )
    return _page(
        "approvals.html.j2",
        language,
        status,
        current=current.person,
        csrf=current.row.csrf_token,
        items=items,
        note=note,
        error=error,
        reason_error=reason_error,
        severity=lambda value: scale_word(language, value),
        urgency=lambda value: scale_word(language, value),
    )


@pages.get("/console/approvals", response_class=HTMLResponse)
def approvals_page(request: Request, done: Annotated[str, Query(max_length=20)] = "") -> Any:
    """Declarations waiting for a second person's approval (operators and admins)."""
    with session_scope(_sessions(request)) as session:
        current = _signed_in(request, session)
        if current is None:
            return _to_login()
        if not _may_decide(current.person):
            return _message(current.person.language, 403, "not_allowed", "not_allowed_text")
        said = words.WORDS[words.context(current.person.language)["language"]]
        note = {"approved": said["approved_note"], "rejected": said["rejected_note"]}.get(done)
        return _approvals(session, current, note=note)


def _decision(request: Request, incident_id: str, csrf: str, decide: Any) -> Any:
    """The frame of approve and reject: a session, the role, the form token, the incident;
    the decision's refusal (the declarer, the window passed, decided meanwhile) shown on
    the approvals page; on success back to it with a note."""
    with session_scope(_sessions(request)) as session:
        current = _signed_in(request, session)
        if current is None:
            return _to_login()
        language = current.person.language
        if not people.csrf_ok(current.row.csrf_token, csrf):
            return _csrf_refused(language)
        if not _may_decide(current.person):
            return _message(language, 403, "not_allowed", "not_allowed_text")
        try:
            parsed = uuid.UUID(incident_id)
        except ValueError:
            parsed = None
        try:
            if parsed is None:
                raise NotFound("no such incident")
            outcome = decide(session, parsed, current)
        except InvalidInput:
            session.rollback()
            return _approvals(session, current, status=422, reason_error=incident_id)
        except (Forbidden, Conflict, NotFound) as exc:
            session.rollback()
            said = words.WORDS[words.context(language)["language"]]
            message = said["not_pending"] if isinstance(exc, Conflict | NotFound) else exc.detail
            return _approvals(session, current, status=exc.status, error=message)
    return RedirectResponse(f"/console/approvals?done={outcome}", status_code=303)


@pages.post("/console/incidents/{incident_id}/approve", response_class=HTMLResponse)
def approve_form(incident_id: str, request: Request, csrf: Field = "") -> Any:
    """Approve a pending declaration as the second person: it is targeted and sent now."""
    state = app_state(request.app)

    def decide(session: Session, parsed: uuid.UUID, current: SignedIn) -> str:
        incidents.approve(
            session,
            parsed,
            actor=people.principal(current.person),
            dispatch=api_dispatcher(state.publisher),
            chunk_members=state.settings.targeting_chunk_members,
        )
        return "approved"

    return _decision(request, incident_id, csrf, decide)


@pages.post("/console/incidents/{incident_id}/reject", response_class=HTMLResponse)
def reject_form(incident_id: str, request: Request, csrf: Field = "", reason: Field = "") -> Any:
    """Reject a pending declaration, with the reason: nothing is ever sent."""

    def decide(session: Session, parsed: uuid.UUID, current: SignedIn) -> str:
        if not reason.strip() or len(reason) > 1000:
            raise InvalidInput("reason: required")
        incidents.reject(session, parsed, reason.strip(), actor=people.principal(current.person))
        return "rejected"

    return _decision(request, incident_id, csrf, decide)
