"""Thin tasks: open a unit of work, call one service function, commit."""

from __future__ import annotations

import socket

from celery import Task
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.db import create_session_factory, engine_from_settings, session_scope
from app.health.service import record_heartbeat
from workers.celery_app import celery_app

_session_factory: sessionmaker[Session] | None = None


def session_factory() -> sessionmaker[Session]:
    """The worker process's session factory, built on first use (after any fork)."""
    global _session_factory
    if _session_factory is None:
        _session_factory = create_session_factory(engine_from_settings(get_settings()))
    return _session_factory


def reset_session_factory() -> None:
    global _session_factory
    if _session_factory is not None:
        engine = _session_factory.kw["bind"]
        engine.dispose(close=False)
    _session_factory = None


@celery_app.task(name="rrmm.heartbeat", bind=True)
def heartbeat(self: Task) -> None:  # type: ignore[type-arg]
    """Record that a worker took a task from the broker and reached the database."""
    name = self.request.hostname or f"celery@{socket.gethostname()}"
    with session_scope(session_factory()) as session:
        record_heartbeat(session, name)
