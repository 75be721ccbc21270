"""What a worker process keeps from one task to the next, held by the tasks' base class:
the session factory and the senders (with their event loop and open connections). Both
are built on first use, after any fork, and forgotten in a freshly forked child."""

from __future__ import annotations

from typing import Any, ClassVar

from celery import Task
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import create_session_factory, engine_from_settings
from app.deliveries.service import Transports


class ProcessTask(Task):  # type: ignore[type-arg]
    """The base class of every task in workers/tasks.py. The state lives on this class,
    not on each task, so the tasks of one process share one engine and one set of
    connections."""

    _session_factory: ClassVar[sessionmaker[Session] | None] = None
    _transports: ClassVar[Transports | None] = None

    @property
    def settings(self) -> Settings:
        return get_settings()

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """The process's session factory, built on first use (after any fork)."""
        if ProcessTask._session_factory is None:
            ProcessTask._session_factory = create_session_factory(
                engine_from_settings(get_settings())
            )
        return ProcessTask._session_factory

    @property
    def transports(self) -> Transports:
        """The process's senders, kept so that HTTP and SMTP connections are reused."""
        if ProcessTask._transports is None:
            ProcessTask._transports = Transports(get_settings())
        return ProcessTask._transports

    @classmethod
    def forget_process_state(cls, **_: Any) -> None:
        """In a freshly forked child: the parent's database connections, loop and sockets
        are not ours to use."""
        if ProcessTask._session_factory is not None:
            engine = ProcessTask._session_factory.kw["bind"]
            engine.dispose(close=False)
        ProcessTask._session_factory = None
        ProcessTask._transports = None
