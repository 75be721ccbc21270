"""Engine and session factories. Nothing here connects at import time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings


def create_db_engine(database_url: str, **kwargs: Any) -> Engine:
    """Build an engine; SQLite gets WAL, a busy timeout and enforced foreign keys.

    SQL parameters (comments, ids, addresses) are kept out of error messages, which end up
    in logs."""
    kwargs.setdefault("hide_parameters", True)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# The execution option that makes a SQLite transaction begin with BEGIN IMMEDIATE.
_BEGIN_IMMEDIATE = "rrmm_begin_immediate"


def _sqlite_begin(connection: Connection) -> None:
    """BEGIN IMMEDIATE for a transaction that asked for it (`begin_immediate`).

    Every other transaction keeps pysqlite's own deferred BEGIN, emitted before the first
    write: its reads run before it, each on the latest data. (SQLAlchemy's recipe of a
    BEGIN of our own for every transaction would start a snapshot at the first read, and in
    WAL mode a transaction whose snapshot another writer has overtaken fails at its first
    write with "database is locked" at once, without waiting out the busy timeout.)"""
    if connection.get_execution_options().get(_BEGIN_IMMEDIATE):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def begin_immediate(session: Session) -> None:
    """Begin the session's transaction now, holding the write lock from the first read on
    SQLite (BEGIN IMMEDIATE), so that a check-then-act cannot interleave with another:
    a second writer waits (busy timeout) and then reads what the first committed. On
    PostgreSQL this only begins; rows are locked where they are read (FOR UPDATE).

    Must come before the session's first statement, which would have begun already."""
    if session.in_transaction():
        raise RuntimeError("begin_immediate: the session's transaction has already begun")
    session.connection(execution_options={_BEGIN_IMMEDIATE: True})


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def engine_from_settings(settings: Settings) -> Engine:
    return create_db_engine(settings.database_url)


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction has committed (never if it rolls back).

    This is how work is enqueued: a task published before the commit could look for rows
    that are not there yet (or never will be).
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def commit(session: Session) -> None:
    """Commit, then run the `on_commit` callbacks registered during the transaction."""
    session.commit()
    for callback in session.info.pop(_AFTER_COMMIT, []):
        callback()


def rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    session.rollback()


_AFTER_COMMIT = "rrmm_after_commit"


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    Used by the CLI and by tasks; the API's request dependency does the same.
    """
    session = factory()
    try:
        yield session
        commit(session)
    except BaseException:
        rollback(session)
        raise
    finally:
        session.close()


def contains_pattern(text: str) -> str:
    """A case-insensitive LIKE pattern for "contains `text`" (use with `escape="\\"` on
    `lower(column)`): `%` and `_` typed by a user match themselves, not anything."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
