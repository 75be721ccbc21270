"""Typed dependencies shared by the routers: settings, the session, the caller and its role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.auth.cache import KeyCache
from app.auth.service import authenticate
from app.config import Settings
from app.db import begin_immediate, session_scope
from app.errors import Forbidden, NotAuthenticated
from app.models import Role
from app.principal import Principal
from app.security import hash_api_key


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, else rolled back."""
    with session_scope(request.app.state.session_factory) as session:
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
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the key cache (`RRMM_API_KEY_CACHE_SECONDS`) or the request's
    session."""
    plaintext = _bearer_key(credentials)
    cache: KeyCache = request.app.state.key_cache
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
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, for the routes dashboards hit all day (status polls, event streams),
    which take no request session: a key verified within `RRMM_API_KEY_CACHE_SECONDS`
    costs neither a database read nor a worker thread; another is read in a short session
    of its own, in the threadpool."""
    plaintext = _bearer_key(credentials)
    cache: KeyCache = request.app.state.key_cache
    key_hash = hash_api_key(plaintext)
    principal = cache.get(key_hash)
    if principal is None:
        factory = request.app.state.session_factory
        principal = await run_in_threadpool(_authenticate_alone, factory, plaintext)
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
