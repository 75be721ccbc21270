"""Typed dependencies shared by the routers: settings, the session, the caller and its role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth.service import Principal, authenticate
from app.config import Settings
from app.db import begin_immediate, session_scope
from app.errors import Forbidden, NotAuthenticated
from app.models import Role


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


def get_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated(
            "an API key is required: `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return authenticate(session, credentials.credentials)


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets through `role` and the roles above it."""

    def _check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.includes(role):
            raise Forbidden(f"this action needs the {role.value} role")
        return principal

    _check.required_role = role  # type: ignore[attr-defined]  # read by the role tests
    return _check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
