"""The application's state, typed: what `create_app` builds once, and what its lifespan
opens (the engine and what needs it) while the application runs.

Starlette's `app.state` holds one attribute, `rrmm`, an `AppState`; everything else reads
it through `app_state()` (the routers through the dependencies in app/deps.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Types only: app.metrics and the rate limiter import this module's users.
    from celery import Celery
    from limits.strategies import MovingWindowRateLimiter
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker
    from starlette.applications import Starlette

    from app.acks.ratelimit import RateLimiter
    from app.auth.cache import KeyCache
    from app.config import Settings
    from app.deliveries.tokens import AckTokenSigner
    from app.incidents.events import EventHub
    from app.incidents.status import StatusCache
    from app.members.service import MemberPolicy


@dataclass(slots=True)
class Running:
    """What the lifespan opens and closes: the database engine, its sessions, the broker
    publisher and the event streams' hub."""

    engine: Engine
    session_factory: sessionmaker[Session]
    publisher: Celery
    event_hub: EventHub


@dataclass(slots=True)
class AppState:
    """Built once by `create_app`; `running` is set by the lifespan."""

    settings: Settings
    member_policy: MemberPolicy
    ack_signer: AckTokenSigner
    ack_limiter: RateLimiter
    status_cache: StatusCache
    key_cache: KeyCache
    metrics_registry: CollectorRegistry
    running: Running | None = None
    # The console's failed sign-ins per address, made on first use (app/console/router.py).
    console_sign_in_limiter: MovingWindowRateLimiter | None = None

    def started(self) -> Running:
        if self.running is None:
            raise RuntimeError("the application has not started: its lifespan has not run")
        return self.running

    @property
    def engine(self) -> Engine:
        return self.started().engine

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self.started().session_factory

    @property
    def publisher(self) -> Celery:
        return self.started().publisher

    @property
    def event_hub(self) -> EventHub:
        return self.started().event_hub


def set_app_state(app: Starlette, state: AppState) -> None:
    app.state.rrmm = state


def app_state(app: Starlette) -> AppState:
    """The application's `AppState` (set by `create_app`)."""
    state: AppState = app.state.rrmm
    return state
