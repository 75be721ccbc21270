"""Typed dependencies shared by the routers: the application's state and what it holds,
the session, the caller and its role, and the incident a path names."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.acks.ratelimit import RateLimiter
from app.auth.service import authenticate
from app.config import Settings
from app.db import begin_immediate, session_scope
from app.deliveries.tokens import AckTokenSigner
from app.errors import Forbidden, NotAuthenticated
from app.incidents.events import EventHub
from app.incidents.service import get_incident
from app.incidents.status import StatusCache
from app.members.service import MemberPolicy
from app.models import Incident, Role
from app.principal import Principal
from app.security import hash_api_key
from app.state import AppState, app_state


async def get_app_state(request: Request) -> AppState:
    return app_state(request.app)


AppStateDep = Annotated[AppState, Depends(get_app_state)]

# The state's parts. Coroutines: they do no I/O, so they are not worth a worker thread.


async def get_settings_dep(state: AppStateDep) -> Settings:
    return state.settings


async def get_status_cache(state: AppStateDep) -> StatusCache:
    return state.status_cache


async def get_event_hub(state: AppStateDep) -> EventHub:
    return state.event_hub


async def get_signer(state: AppStateDep) -> AckTokenSigner:
    return state.ack_signer


async def get_rate_limiter(state: AppStateDep) -> RateLimiter:
    return state.ack_limiter


async def get_member_policy(state: AppStateDep) -> MemberPolicy:
    return state.member_policy


async def get_publisher(state: AppStateDep) -> Celery:
    return state.publisher


async def get_session_factory(state: AppStateDep) -> sessionmaker[Session]:
    return state.session_factory


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]
EventHubDep = Annotated[EventHub, Depends(get_event_hub)]
SignerDep = Annotated[AckTokenSigner, Depends(get_signer)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
MemberPolicyDep = Annotated[MemberPolicy, Depends(get_member_policy)]
PublisherDep = Annotated[Celery, Depends(get_publisher)]
# For work outside the request's session: streams, imports, the ack page's own transactions.
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


def get_session(state: AppStateDep) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, else rolled back."""
    with session_scope(state.session_factory) as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit is an error
# response rather than a 2xx for a write that did not happen.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_write_session(session: SessionDep) -> Session:
    """The request's session with its transaction begun at once, the write lock taken
    (SQLite: BEGIN IMMEDIATE), for routes that read a row, check its state, then act:
    two such requests run one after the other, and the second sees what the first wrote
    (a 409, not a 500 or the same change twice). Declare it before any dependency that
    uses the session (the caller's key is looked up with it)."""
    begin_immediate(session)
    return session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `rrmm keys create`.")


def _bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated(
            "an API key is required: `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def get_principal(
    state: AppStateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the key cache (`RRMM_API_KEY_CACHE_SECONDS`) or the request's
    session."""
    plaintext = _bearer_key(credentials)
    cache = state.key_cache
    key_hash = hash_api_key(plaintext)
    principal = cache.get(key_hash)
    if principal is None:
        principal = authenticate(session, plaintext)
        cache.put(key_hash, principal)
    return principal


def _authenticate_alone(factory: sessionmaker[Session], plaintext: str) -> Principal:
    with session_scope(factory) as session:
        return authenticate(session, plaintext)


async def get_polling_principal(
    state: AppStateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, for the routes dashboards hit all day (status polls, event streams),
    which take no request session: a key verified within `RRMM_API_KEY_CACHE_SECONDS`
    costs neither a database read nor a worker thread; another is read in a short session
    of its own, in the threadpool."""
    plaintext = _bearer_key(credentials)
    cache = state.key_cache
    key_hash = hash_api_key(plaintext)
    principal = cache.get(key_hash)
    if principal is None:
        principal = await run_in_threadpool(_authenticate_alone, state.session_factory, plaintext)
        cache.put(key_hash, principal)
    return principal


CallerDep = Annotated[Principal, Depends(get_principal)]
PollingCallerDep = Annotated[Principal, Depends(get_polling_principal)]


def require(role: Role, *, polling: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through `role` and the roles above it (with `polling`, the
    caller is found by `get_polling_principal`). The check itself runs in the event loop:
    it does no I/O, so it is not worth a thread."""

    def allowed(principal: Principal) -> Principal:
        if not principal.role.includes(role):
            raise Forbidden(f"this action needs the {role.value} role")
        return principal

    async def _check(principal: CallerDep) -> Principal:
        return allowed(principal)

    async def _check_polling(principal: PollingCallerDep) -> Principal:
        return allowed(principal)

    check = _check_polling if polling else _check
    check.required_role = role  # type: ignore[attr-defined]  # read by the role tests
    return check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
# For routes without a request session (see get_polling_principal).
PollingViewer = Annotated[Principal, Depends(require(Role.VIEWER, polling=True))]


def get_incident_dep(incident_id: uuid.UUID, session: SessionDep) -> Incident:
    """The incident the path names, or a 404. Declare it after the caller's role, so an
    unauthorised caller learns nothing about which incidents exist."""
    return get_incident(session, incident_id)


IncidentDep = Annotated[Incident, Depends(get_incident_dep)]
