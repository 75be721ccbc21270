"""`begin_immediate`: on SQLite the write lock is held from the transaction's first read (a
second writer waits, then reads what the first committed); other transactions keep the
driver's deferred BEGIN. Run against real database files, never a mock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.db import begin_immediate, create_db_engine, create_session_factory, session_scope


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'tx.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))
    yield engine
    engine.dispose()


def other_writer_blocked(path: str) -> bool:
    """Whether a second connection, not waiting at all, is refused the write lock."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    else:
        other.execute("ROLLBACK")
        return False
    finally:
        other.close()


def test_the_write_lock_is_held_from_the_first_read(sqlite_engine: Engine):
    path = str(sqlite_engine.url.database)
    factory = create_session_factory(sqlite_engine)
    with session_scope(factory) as session:
        begin_immediate(session)
        assert session.scalar(text("SELECT n FROM counter")) == 0
        assert other_writer_blocked(path)
    assert not other_writer_blocked(path)  # released at commit
    # An ordinary session reads without taking it (pysqlite's deferred BEGIN, unchanged).
    with session_scope(factory) as session:
        assert session.scalar(text("SELECT n FROM counter")) == 0
        assert not other_writer_blocked(path)
        session.execute(text("UPDATE counter SET n = n"))
        assert other_writer_blocked(path)


def test_check_then_act_sessions_run_one_after_the_other(sqlite_engine: Engine):
    """Each thread reads the counter, waits a little, then writes what it read + 1: with
    the lock from the first read, no increment is lost."""
    factory = create_session_factory(sqlite_engine)
    threads_count = 4
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def increment() -> None:
        try:
            barrier.wait(10)
            with session_scope(factory) as session:
                begin_immediate(session)
                seen = session.scalar(text("SELECT n FROM counter"))
                time.sleep(0.05)  # widen the window a deferred BEGIN would leave open
                session.execute(text("UPDATE counter SET n = :n"), {"n": (seen or 0) + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=increment) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    with sqlite_engine.connect() as connection:
        assert connection.scalar(text("SELECT n FROM counter")) == threads_count


def test_begin_immediate_after_the_first_statement_is_a_programming_error(
    sqlite_engine: Engine,
):
    with create_session_factory(sqlite_engine)() as session:
        session.execute(text("SELECT 1"))
        with pytest.raises(RuntimeError, match="already begun"):
            begin_immediate(session)
